"""`slipstream pipeline`: print presets fully expanded, list passes and options, check pipeline text or configs."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="print a preset expanded, list passes, or check a pipeline or config",
                       description="Pipelines are canonical text (`fuse-rms-norm{exclude=*.k_norm}, fuse-rope`) or "
                                   "a preset name; config files are TOML (docs/debugging.md).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--print", metavar="PRESET", help="print PRESET as a config file with every default spelled out")
    what.add_argument("--list", action="store_true", help="list passes (with options and defaults) and presets")
    what.add_argument("--check", metavar="TEXT_OR_FILE", help="parse pipeline text or a .toml file; print it canonical")
    p.add_argument("--text", action="store_true", help="with --print: only the pipeline text, not the TOML")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slipstream.config import format_config, load_config, preset_config
    from slipstream.passes import PASSES, PRESETS, Pipeline

    if args.print:
        cfg = preset_config(args.print)
        print(cfg.pipeline.full_text() if args.text else format_config(cfg, full=True), end="\n" if args.text else "")
    elif args.list:
        for name, cls in PASSES.items():
            print(f"{Pipeline.parse(name).full_text()}\n    {cls.summary}")
        print("\npresets:")
        for name, text in PRESETS.items():
            print(f"  {name} = {text}")
    elif args.check.endswith(".toml") or Path(args.check).is_file():
        print(format_config(load_config(args.check)), end="")
    else:
        print(Pipeline.parse(args.check))
    return 0
