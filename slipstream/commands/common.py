"""What the subcommands share: user errors with hints, loading a model, pipeline/config arguments, progress."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SOURCE_HELP = "a local Hugging Face checkpoint directory (config.json + *.safetensors), or 'demo' for the built-in model"


class UserError(Exception):
    """A mistake the user can fix: printed as one line plus a hint, never as a traceback (unless --debug)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=SOURCE_HELP)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--pipeline", help="canonical pipeline text or a preset name (default: the config's, else "
                                        "'default')")
    how.add_argument("--config", help="a TOML config file (pipeline, backend and debug settings; docs/debugging.md)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="load the checkpoint in this dtype (default: the checkpoint's own)")
    p.add_argument("--print-after", choices=("change", "all", "none"),
                   help="graph diff: passes that changed a graph (default), every pass, or none")
    p.add_argument("--verify", action="store_true", help="check every rewrite numerically (exit 1 if one is out "
                                                         "of tolerance)")
    p.add_argument("--dump-dir", help="write graphs, region pictures, report.html, pipeline.txt and repro.py here")


def resolve_config(args: argparse.Namespace):
    """The Config these arguments ask for: the file's (or the pipeline's) with the command-line flags on top."""
    from slipstream.config import Config, load_config
    from slipstream.debug.options import DebugOptions
    from slipstream.passes import Pipeline

    cfg = load_config(args.config) if args.config else Config(Pipeline.parse(args.pipeline or "default"))
    d = cfg.debug
    debug = DebugOptions(args.print_after or d.print_after, args.verify or d.verify,
                         getattr(args, "bisect", False) or d.bisect, args.dump_dir or d.dump_dir)
    return Config(cfg.pipeline, cfg.backend, debug, cfg.version)


def load_model(source: str, dtype: str = "auto"):
    """(model, checkpoint dir or None): the built-in demo model, or a checkpoint directory via transformers."""
    import torch
    if source == "demo":
        from slipstream.demo import demo_model
        return demo_model(dtype=torch.float32 if dtype == "auto" else getattr(torch, dtype)), None
    path = Path(source)
    if not path.is_dir():
        raise UserError(f"no such checkpoint directory: {source}", f"SOURCE is {SOURCE_HELP}")
    if not (path / "config.json").is_file():
        raise UserError(f"{source} has no config.json, so it is not a Hugging Face checkpoint directory",
                        "save one with model.save_pretrained(DIR), or pass 'demo'")
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise UserError(f"transformers cannot load {source}: {str(e).splitlines()[0]}",
                        "check that the directory holds config.json and the model's *.safetensors") from e
    return model.eval(), str(path)


def progress(total: int, desc: str, quiet: bool):
    """A progress bar on stderr (hidden with --quiet or when stderr is not a terminal)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=True if quiet else None, leave=False,
                bar_format="{desc}: {n_fmt}/{total_fmt} {bar} {postfix}")


def optimize_with(model, cfg, quiet: bool):
    """optimize() (capture, rewrite, numeric check, dump) behind a progress bar."""
    import slipstream

    stages = "capture and rewrite" + (", verify" if cfg.debug.verify else "") + (", dump" if cfg.debug.dump_dir else "")
    with progress(1, "optimize", quiet) as bar, _quiet_warnings():
        bar.set_postfix_str(stages)
        slipstream.optimize(model, config=cfg)
        bar.update()
    return model


class _quiet_warnings:
    """The CLI reports verify failures itself; the library's warning would print them twice."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message="slipstream verify")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
