"""Print the variables table of docs/switching-on.md, generated from the switch table.

    python scripts/switch_table.py

The table in the docs must equal this output (tests/test_switches.py checks it): after adding
or changing a row of ``aiotrace_boot.switches.SWITCHES``, paste the output over the table.
"""

from __future__ import annotations

import sys

from aiotrace_boot.switches import markdown_table

if __name__ == "__main__":
    sys.stdout.write(markdown_table())
