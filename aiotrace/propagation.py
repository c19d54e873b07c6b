"""Carry the current OpenTelemetry context across a boundary that only moves bytes.

A ``contextvars.Context`` lives in one process. To continue a trace in another process, or on the
far side of a user's own queue or socket, the context has to travel as text: the globally
configured OpenTelemetry text-map propagator writes it into a carrier (W3C ``traceparent`` /
``tracestate`` and ``baggage`` by default, whatever ``OTEL_PROPAGATORS`` or
``set_global_textmap`` chose otherwise) and reads it back on the other side. This module is that
pair, plus the picklable call wrapper aiotrace sends to process pools.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, TypeVar

from . import _otel
from ._otel import Context

__all__ = ["attached_context", "call_with_carrier", "extract_context", "inject_context"]

_T = TypeVar("_T")


def inject_context(otel_ctx: Optional[Context] = None) -> Dict[str, str]:
    """The carrier for ``otel_ctx`` (default: the current context): a new ``dict`` of text
    headers written by the global propagator. Empty when there is nothing to carry."""
    # Imported here: ``opentelemetry.propagate`` reads OTEL_PROPAGATORS and loads entry points
    # when first imported, which ``import aiotrace`` must not do.
    from opentelemetry import propagate

    carrier: Dict[str, str] = {}
    propagate.inject(carrier, context=otel_ctx)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The OpenTelemetry context that ``carrier`` holds, on an empty base: nothing current on
    this side leaks into it, so an empty carrier gives an empty context (no current span)."""
    from opentelemetry import propagate

    return propagate.extract(carrier, context=Context())


@contextlib.contextmanager
def attached_context(carrier: Mapping[str, str]) -> Iterator[Context]:
    """Make the context carried by ``carrier`` (see :func:`inject_context`) current for the
    ``with`` block, and restore the previous one after it. Yields that context.

    Spans started in the block are children of the span that was current where the carrier was
    made, in the same trace; baggage comes along. An empty carrier means no current span.
    """
    otel_ctx = extract_context(carrier)
    token = _otel.attach(otel_ctx)
    try:
        yield otel_ctx
    finally:
        _otel.detach(token)


def call_with_carrier(
    carrier: Mapping[str, str], fn: Callable[..., _T], *args: Any, **kwargs: Any
) -> _T:
    """``fn(*args, **kwargs)`` inside :func:`attached_context` of ``carrier``.

    A module-level function, so that ``functools.partial(call_with_carrier, carrier, fn)`` is
    picklable whenever ``fn`` is: what aiotrace submits to a process pool in place of ``fn``.
    """
    token = _otel.attach(extract_context(carrier))  # attached_context(), minus a generator
    try:
        return fn(*args, **kwargs)
    finally:
        _otel.detach(token)
