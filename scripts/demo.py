"""`make demo` used to run this; it now runs the full tour. Kept so old instructions still work:
`python scripts/demo.py [--quick]` is `modelport tour --out demo-out --force [--quick]`."""

from __future__ import annotations

import sys

from modelport.cli.main import main

if __name__ == "__main__":
    main(["tour", "--out", "demo-out", "--force", *sys.argv[1:]])
