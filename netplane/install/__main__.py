"""`python3 -m netplane.install [install|uninstall] ...`: the node install without netplane's dependencies."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
