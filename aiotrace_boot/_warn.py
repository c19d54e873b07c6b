"""The start-up machinery's one way to speak: a line on stderr.

Its own module so that ``_hook`` and the package's ``__init__`` both use it without importing
each other.
"""

import sys

__all__ = ["warn"]


def warn(message: str) -> None:
    """One line on stderr, prefixed with ``aiotrace:``; never raises (stderr may be closed)."""
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(f"aiotrace: {message}\n")
            stream.flush()
    except Exception:  # nowhere left to report to
        pass
