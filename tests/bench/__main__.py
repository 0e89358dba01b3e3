"""`./run bench [NAME ...]`: run benchmarks (each prints netplane beside its anchor, with ratios).

Without names it lists them; they are long and meant to be run one at a time on a quiet machine.
"""

from __future__ import annotations

import pkgutil
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).parent


def available() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(BENCH_DIR)])
                  if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    names = available()
    if not argv:
        print("benchmarks: " + ", ".join(names))
        print("run one:    ./run bench NAME [its options]   (e.g. ./run bench state --objects 500)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"no benchmark {name!r}; there are: {', '.join(names)}", file=sys.stderr)
        return 2
    sys.argv = [f"bench_{name}", *rest]
    runpy.run_module(f"tests.bench.bench_{name}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
