"""``python serve.py [uvicorn options]``: ``uvicorn`` as its own command runs it, except that with
``REALSTACK_INSTALL=1`` the application's code calls ``aiotrace.install()`` first, before
uvicorn imports uvloop (the "install() from code" way of switching aiotrace on)."""

from __future__ import annotations

import os
import sys

if os.environ.get("REALSTACK_INSTALL") == "1":
    import aiotrace

    aiotrace.install()

import uvicorn

if __name__ == "__main__":
    sys.exit(uvicorn.main())
