"""The `slipstream` command line.

    slipstream export gguf CHECKPOINT_DIR OUT.gguf [--quant q4_k_m] [--tokenizer DIR] [--threads N] [--modelfile]
    slipstream export vllm CHECKPOINT_DIR OUT_DIR [--quant w4a16] [--shard-size 2GB] [--overwrite] [--verify]
"""
from __future__ import annotations

import argparse
import sys


def _export(args: argparse.Namespace) -> int:
    import slipstream
    from slipstream.backends.errors import ExportError

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.format == "gguf":
        options = dict(threads=args.threads, modelfile=args.modelfile)
    else:
        options = dict(lora=args.lora, shard_size=args.shard_size, overwrite=args.overwrite, verify=args.verify,
                       dtype=args.dtype)
    quant = None if args.quant == "none" else args.quant
    try:
        out = slipstream.export(args.source, args.out, format=args.format, quant=quant, tokenizer=tokenizer,
                                progress=not args.quiet, **options)
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"slipstream export: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a Hugging Face checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint's own")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_export)


def parser() -> argparse.ArgumentParser:
    from slipstream.backends.gguf import QUANTS
    from slipstream.backends.vllm import SCHEMES

    p = argparse.ArgumentParser(prog="slipstream", description="graph-rewriting optimizer for transformer models")
    sub = p.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a checkpoint as a GGUF file or a vLLM checkpoint directory")
    formats = export.add_subparsers(dest="format", required=True)
    gguf = formats.add_parser("gguf", help="one GGUF file for llama.cpp / Ollama")
    _common(gguf)
    gguf.add_argument("out", help="the .gguf file to write (atomically)")
    gguf.add_argument("--quant", default="f16", choices=QUANTS)
    gguf.add_argument("--threads", type=int, default=0, help="quantization threads (default: up to 8)")
    gguf.add_argument("--modelfile", action="store_true", help="also write an Ollama Modelfile next to it")
    vllm = formats.add_parser("vllm", help="a checkpoint directory vLLM serves (docs/vllm.md)")
    _common(vllm)
    vllm.add_argument("out", help="the directory to write (atomically; must not exist unless --overwrite)")
    vllm.add_argument("--quant", default="none", choices=("none", *SCHEMES),
                      help="compressed-tensors scheme (default: none, dense weights)")
    vllm.add_argument("--lora", default="merge", choices=("merge", "adapter"),
                      help="merge (default); adapter dirs are written from in-memory peft models (Python API)")
    vllm.add_argument("--shard-size", default="5GB", help="largest safetensors shard, e.g. 2GB or 500MB")
    vllm.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the checkpoint's")
    vllm.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    vllm.add_argument("--verify", action="store_true",
                      help="reload with transformers and record the max logit difference in the README")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
