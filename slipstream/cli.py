"""The `slipstream` command line: one entry point, a subcommand per task, `--help` on each.

    slipstream optimize SOURCE [--pipeline TEXT | --config FILE] [--save DIR] [--verify] [--dump-dir DIR]
    slipstream diff SOURCE [--print-after change|all|none] [--verify] [--bisect] [--dump-dir DIR]
    slipstream pipeline --print PRESET | --list | --check TEXT_OR_FILE
    slipstream export gguf CHECKPOINT_DIR OUT.gguf [--quant q4_k_m] [--tokenizer DIR] [--threads N] [--modelfile]
    slipstream export vllm CHECKPOINT_DIR OUT_DIR [--quant w4a16] [--shard-size 2GB] [--overwrite] [--verify]
    slipstream bench NAME... [--list] [--args 'ARGS']

User errors print one line and a hint (exit 2); `--debug` shows the traceback of any error.
"""
from __future__ import annotations

import argparse
import sys

EXIT_CODES = """exit codes:
  0    success
  1    a check failed: --verify found a rewrite out of tolerance, --bisect found a drifting rewrite,
       or a benchmark script failed
  2    user error: bad arguments, pipeline text, config file, checkpoint or output path (one line + hint)
  3    internal error: a bug in slipstream or the model (rerun with --debug for the traceback)
  130  interrupted"""


def _export(args: argparse.Namespace) -> int:
    import slipstream

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
    except (ValueError, FileNotFoundError) as e:  # the exporters' own checks word user mistakes
        from .commands.common import UserError
        raise UserError(str(e).splitlines()[0], f"see `slipstream export {args.format} --help` and docs/"
                                                f"{args.format}.md") from e
    print(out)
    return 0


def _export_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a Hugging Face checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint's own")
    p.set_defaults(run=_export)


def _add_export(sub, common: argparse.ArgumentParser) -> None:
    """`export FORMAT ...`: one subparser per format, so a new format is one more `_add_<format>` here."""
    from slipstream.backends.gguf import QUANTS
    from slipstream.backends.vllm import SCHEMES

    export = sub.add_parser("export", help="write a checkpoint for another runtime (gguf, vllm)", parents=[common],
                            description="Write a checkpoint for another runtime: FORMAT is a subcommand.")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    gguf = formats.add_parser("gguf", help="one GGUF file for llama.cpp / Ollama (docs/gguf.md)", parents=[common])
    _export_common(gguf)
    gguf.add_argument("out", help="the .gguf file to write (atomically)")
    gguf.add_argument("--quant", default="f16", choices=QUANTS)
    gguf.add_argument("--threads", type=int, default=0, help="quantization threads (default: up to 8)")
    gguf.add_argument("--modelfile", action="store_true", help="also write an Ollama Modelfile next to it")
    vllm = formats.add_parser("vllm", help="a checkpoint directory vLLM serves (docs/vllm.md)", parents=[common])
    _export_common(vllm)
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


def parser() -> argparse.ArgumentParser:
    from .commands import bench, diff, optimize, pipeline

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p = argparse.ArgumentParser(prog="slipstream", parents=[common], epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="graph-rewriting optimizer for transformer models")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (optimize, diff, pipeline):
        module.add_parser(_with_common(sub, common))
    _add_export(sub, common)
    bench.add_parser(_with_common(sub, common))
    return p


class _with_common:
    """Adds the shared flags (--debug, --quiet) and the exit codes to every subcommand's parser."""

    def __init__(self, sub, common):
        self.sub, self.common = sub, common

    def add_parser(self, name, **kwargs):
        return self.sub.add_parser(name, parents=[self.common], epilog=EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.debug, args.quiet = getattr(args, "debug", False), getattr(args, "quiet", False)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"slipstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line (+ hint); --debug shows the traceback
        if args.debug:
            raise
        from .errors import describe
        code, message, hint = describe(e)
        print(f"slipstream {args.command}: error: {message}", file=sys.stderr)
        if hint:
            print(f"  hint: {hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
