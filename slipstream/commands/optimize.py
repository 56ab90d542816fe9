"""`slipstream optimize SOURCE`: optimize a checkpoint (or the demo model), print the report, optionally save."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from .common import UserError, add_model_args, load_model, optimize_with, resolve_config

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja", "vocab.json", "merges.txt", "generation_config.json")


def add_parser(sub) -> None:
    p = sub.add_parser("optimize", help="optimize a checkpoint and print what was fused, where, and why not",
                       description="Optimize SOURCE with a pipeline and print the report (explain()). With --save, "
                                   "write the model as a checkpoint plain transformers loads (same weights).")
    add_model_args(p)
    p.add_argument("--save", metavar="DIR", help="write the optimized model here (save_pretrained + tokenizer)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import slipstream
    from slipstream.debug.diff import verify_lines

    cfg = resolve_config(args)
    model, checkpoint = load_model(args.source, args.dtype)
    optimize_with(model, cfg, args.quiet)
    print(slipstream.explain(model))
    checks = slipstream.report(model).checks
    if checks:
        print("\n" + "\n".join(verify_lines(checks)))
    if args.save:
        print(f"saved to {save(model, args.save, checkpoint)}")
    return 1 if any(not c.ok for c in checks) else 0


def save(model, directory: str, checkpoint: str | None) -> Path:
    """save_pretrained with the plain model's weights (LoRA merged, quantized weights dequantized if a module
    pass changed them), the source's tokenizer files, and slipstream.json recording version and pipeline."""
    import slipstream
    from slipstream.modules import QuantLinear

    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--save directory {directory} exists and is not empty", "choose a new directory")
    changed = any(isinstance(m, QuantLinear) for m in model.modules())
    model.save_pretrained(out, state_dict=slipstream.merge_lora(model) if changed else None)
    if checkpoint:
        for name in _TOKENIZER_FILES:
            if (Path(checkpoint) / name).is_file() and not (out / name).exists():
                shutil.copy(Path(checkpoint) / name, out / name)
    report = slipstream.report(model)
    (out / "slipstream.json").write_text(json.dumps({"version": report.version, "pipeline": report.pipeline},
                                                    indent=1) + "\n", encoding="utf-8")
    return out
