"""`slipstream bench NAME...`: run benchmark scripts (benchmarks/NAME.py) with this Python."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .common import UserError, progress


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run benchmark scripts (benchmarks/*.py)",
                       description="Run benchmarks/NAME.py for each NAME with this Python; --args go to every "
                                   "script. The directory: --dir, else $SLIPSTREAM_BENCHMARKS, else the "
                                   "source checkout's benchmarks/.")
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmark script names, e.g. kernels attention")
    p.add_argument("--list", action="store_true", help="list the benchmark scripts")
    p.add_argument("--dir", help="the benchmarks directory")
    p.add_argument("--args", default="", help="arguments for every script, one string: --args '--layers 8 16'")
    p.set_defaults(run=run)


def _directory(explicit: str | None) -> Path:
    import slipstream
    candidates = [explicit, os.environ.get("SLIPSTREAM_BENCHMARKS"), Path(slipstream.__file__).parents[1] / "benchmarks"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
        if c and c is explicit:
            raise UserError(f"no such benchmarks directory: {explicit}", "pass the directory holding the *.py scripts")
    raise UserError("no benchmarks directory found (they ship with the source checkout, not the wheel)",
                    "run from a checkout, or pass --dir DIR / set SLIPSTREAM_BENCHMARKS")


def run(args: argparse.Namespace) -> int:
    directory = _directory(args.dir)
    scripts = {p.stem: p for p in sorted(directory.glob("*.py")) if not p.stem.startswith("_")}
    if args.list or not args.names:
        if not args.list:
            raise UserError("no benchmark named", f"choose from: {', '.join(scripts)} (or --list)")
        print("\n".join(scripts))
        return 0
    for name in args.names:
        if name.removesuffix(".py") not in scripts:
            import difflib
            close = difflib.get_close_matches(name, list(scripts), n=1)
            raise UserError(f"unknown benchmark '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""),
                            f"available: {', '.join(scripts)}")
    extra = shlex.split(args.args)
    failed = []
    with progress(len(args.names), "bench", args.quiet) as bar:
        for name in args.names:
            bar.set_postfix_str(name)
            if subprocess.run([sys.executable, str(scripts[name.removesuffix(".py")]), *extra]).returncode:
                failed.append(name)
            bar.update()
    if failed:
        print(f"slipstream bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
