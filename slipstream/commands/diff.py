"""`slipstream diff SOURCE`: the graph diff of a pipeline on a model; --verify, --bisect, --dump-dir."""
from __future__ import annotations

import argparse

from .common import add_model_args, load_model, optimize_with, progress, resolve_config


def add_parser(sub) -> None:
    p = sub.add_parser("diff", help="print the graph diff of a pipeline (removed/added nodes per pass)",
                       description="Optimize SOURCE and print, per captured graph and pass, the nodes removed (-) and "
                                   "added (+) with shapes, dtypes, rule and replaced nodes; matches and refusals.")
    add_model_args(p)
    p.add_argument("--bisect", action="store_true",
                   help="find the first pass, then the first rule application, that makes the output drift")
    p.add_argument("--no-times", action="store_true", help="leave pass times out (stable text for golden files)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import slipstream
    from slipstream.debug.bisect import bisect

    cfg = resolve_config(args)
    model, _ = load_model(args.source, args.dtype)
    optimize_with(model, cfg, args.quiet)
    print(slipstream.diff(model, cfg.debug.print_after, times=not args.no_times), end="")
    failed = any(not c.ok for c in slipstream.report(model).checks)
    if cfg.debug.bisect:
        slipstream.restore(model)
        with progress(0, "bisect", args.quiet) as bar:
            def step(text: str) -> None:
                bar.total += 1
                bar.set_postfix_str(text)
                bar.update()
            result = bisect(model, str(cfg.pipeline), progress=step)
        print("\n" + str(result))
        failed = failed or result.found
    return 1 if failed else 0
