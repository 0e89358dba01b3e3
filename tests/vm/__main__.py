"""Run one command in the test VM: `python -m tests.vm [--timeout S] -- COMMAND...` (as root)."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from tests.vm.harness import prepare, run_in_vm


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--console", action="store_true", help="print the guest's console log too")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    kernel = prepare()
    with tempfile.TemporaryDirectory(prefix="np-vm-") as tmp:
        result = run_in_vm(shlex.join(command), Path(tmp), timeout=args.timeout, kernel=kernel)
        if args.console:
            sys.stdout.write(result.console)
        sys.stdout.write((Path(tmp) / "output.log").read_text(errors="replace"))
        print(f"[{kernel.package}: exit {result.returncode} after {result.seconds:.1f}s]", file=sys.stderr)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
