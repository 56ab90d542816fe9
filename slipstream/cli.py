"""The `slipstream` command line.

    slipstream export gguf CHECKPOINT_DIR OUT.gguf [--quant q4_k_m] [--tokenizer DIR] [--threads N] [--modelfile]
"""
from __future__ import annotations

import argparse
import sys


def _export(args: argparse.Namespace) -> int:
    import slipstream
    from slipstream.backends.gguf.arch import ExportError

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    try:
        out = slipstream.export(args.source, args.out, format=args.format, quant=args.quant, tokenizer=tokenizer,
                                threads=args.threads, progress=not args.quiet, modelfile=args.modelfile)
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"slipstream export: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def parser() -> argparse.ArgumentParser:
    from slipstream.backends.gguf import QUANTS

    p = argparse.ArgumentParser(prog="slipstream", description="graph-rewriting optimizer for transformer models")
    sub = p.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a checkpoint as a GGUF file (llama.cpp, Ollama)")
    export.add_argument("format", choices=("gguf",))
    export.add_argument("source", help="a Hugging Face checkpoint directory (config.json + *.safetensors)")
    export.add_argument("out", help="the .gguf file to write (atomically)")
    export.add_argument("--quant", default="f16", choices=QUANTS)
    export.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint's own")
    export.add_argument("--threads", type=int, default=0, help="quantization threads (default: up to 8)")
    export.add_argument("--modelfile", action="store_true", help="also write an Ollama Modelfile next to it")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(run=_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
