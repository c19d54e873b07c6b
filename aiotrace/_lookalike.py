"""Replacements that look like the originals they stand in for.

Code and tests inspect the objects aiotrace puts in place of asyncio's: a framework asks
``inspect.iscoroutinefunction(loop.create_server)``, ``unittest.mock.create_autospec`` builds an
``AsyncMock`` only for a coroutine function, a logger prints ``__module__``/``__qualname__``,
``pickle`` stores a function by that name. :func:`like` gives a replacement the original's
name, qualified name, module, docstring and ``__dict__``, and ``__wrapped__`` pointing at the
original (so ``inspect.signature`` reports the original's signature).

:func:`coroutine_function_like` is for an original that is a coroutine function. Its replacement
returns the original's own coroutine, so that no frame of aiotrace's sits in the await chain, and
from Python 3.12 on ``inspect.markcoroutinefunction`` makes it a coroutine function for
``inspect``, ``asyncio`` and ``unittest.mock`` alike. Before 3.12, ``inspect.iscoroutinefunction``
only accepts a function whose code is a coroutine's (read in CPython 3.8-3.11's ``inspect.py``),
so there the replacement is an ``async def`` that awaits the original: one frame more.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from typing import Any, Callable, Optional, TypeVar

__all__ = ["MARKS_COROUTINE_FUNCTIONS", "coroutine_function_like", "like"]

_F = TypeVar("_F", bound=Callable[..., Any])

MARKS_COROUTINE_FUNCTIONS = sys.version_info >= (3, 12)
# The marker ``asyncio.iscoroutinefunction`` accepts besides ``inspect``'s answer (CPython
# 3.8-3.15, read in their ``asyncio/coroutines.py``); None if a later Python drops it.
_IS_COROUTINE = getattr(asyncio.coroutines, "_is_coroutine", None)


def like(original: Any) -> Callable[[_F], _F]:
    """Decorator: the replacement takes ``original``'s metadata (``functools.wraps``)."""

    def decorate(replacement: _F) -> _F:
        return functools.update_wrapper(replacement, original)  # type: ignore[return-value]

    return decorate


def _asyncio_iscoroutinefunction(func: Any) -> bool:
    # ``asyncio.iscoroutinefunction`` (deprecated from 3.14 on), which older code, and
    # ``unittest.mock`` before 3.12, still ask.
    marked = _IS_COROUTINE is not None and getattr(func, "_is_coroutine", None) is _IS_COROUTINE
    return marked or inspect.iscoroutinefunction(func)


def coroutine_function_like(
    original: Callable[..., Any],
    returning: Callable[..., Any],
    awaiting: Optional[Callable[..., Any]] = None,
) -> Callable[..., Any]:
    """A replacement for ``original`` that is a coroutine function exactly where ``original``
    is one, for ``inspect`` and for ``asyncio`` each.

    ``returning`` is a plain function that returns the coroutine to await; ``awaiting`` an
    ``async def`` doing the same (by default one that awaits ``returning``'s coroutine), used
    only before Python 3.12 for an original that ``inspect`` calls a coroutine function.
    uvloop's Cython methods are coroutine functions for ``asyncio`` only on Python 3.8 (its
    ``_is_coroutine`` marker), for both on 3.11 (both checked by running).
    """
    replacement = returning
    if inspect.iscoroutinefunction(original):
        if MARKS_COROUTINE_FUNCTIONS:
            inspect.markcoroutinefunction(returning)  # type: ignore[attr-defined]
        elif awaiting is not None:
            replacement = awaiting
        else:

            async def replacement(*args: Any, **kwargs: Any) -> Any:
                return await returning(*args, **kwargs)

    if (
        _IS_COROUTINE is not None
        and _asyncio_iscoroutinefunction(original)
        and not _asyncio_iscoroutinefunction(replacement)
    ):
        replacement._is_coroutine = _IS_COROUTINE  # type: ignore[attr-defined]
    return like(original)(replacement)
