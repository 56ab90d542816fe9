"""GGUF export speed and memory: slipstream's writer against llama.cpp's own converter, same checkpoint, same run.

    python benchmarks/gguf_export.py [--work DIR]

Builds a Qwen2.5-0.5B-shaped bf16 checkpoint (494M parameters, random weights, the real Qwen2 tokenizer) once, then
times whole processes (wall clock, peak RSS from wait4): `slipstream export gguf` to f16, q8_0 and q4_k_m, and
llama.cpp's `convert_hf_to_gguf.py` (from the llama-cpp-python source package pip fetches, unpacked in a temp dir,
never committed) to f16 and q8_0, plus `llama_model_quantize` f16 -> Q4_K_M (llama-quantize's route to Q4_K_M).
"""
from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from process_stats import run  # benchmarks/ is the script's directory: on sys.path

QWEN05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
               num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=True)


def checkpoint(work: Path) -> Path:
    """The benchmark checkpoint in `work`, built once. Built in a child process: a child's peak RSS (wait4) starts
    at its parent's size, so the measured exports must not be forked from a process that held the model."""
    ckpt = work / "qwen2.5-0.5b-shaped"
    if not (ckpt / "config.json").exists():
        print(f"building the checkpoint in {ckpt} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--make-checkpoint", str(ckpt)], check=True)
    return ckpt


def make_checkpoint(path: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN05B)).to(torch.bfloat16)
    model.save_pretrained(path)
    shipped = Path(__file__).resolve().parents[1] / "tests" / "data" / "tokenizers" / "qwen2"  # the real Qwen2 one
    for f in shipped.iterdir():
        target = path / f.name.removesuffix(".gz")
        target.write_bytes(gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes())


def llama_cpp_converter(work: Path) -> Path:
    """convert_hf_to_gguf.py from the llama-cpp-python sdist (pip's cache makes this quick after the first time)."""
    script = work / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "llama-cpp-python==0.3.36", "-d", str(work)], check=True, capture_output=True)
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and m.isfile() and
                   ("/gguf-py/" in m.name or "/conversion/" in m.name or m.name.endswith(".py"))]
        for m in members:
            m.name = "llama.cpp/" + m.name.split("/vendor/llama.cpp/", 1)[1]
        tar.extractall(work, members=members)
    return script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the checkpoint and outputs (kept)")
    parser.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_checkpoint:
        return make_checkpoint(args.make_checkpoint)
    work = args.work or Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    ckpt = checkpoint(work)
    rows = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        rows[f"slipstream {quant}"] = run([sys.executable, "-m", "slipstream", "export", "gguf", str(ckpt),
                                           str(work / f"ours-{quant}.gguf"), "--quant", quant, "--quiet"])
        print(f"slipstream {quant}: {rows[f'slipstream {quant}'][0]:.1f} s, {rows[f'slipstream {quant}'][1]:.2f} GiB",
              flush=True)
    script = llama_cpp_converter(work)
    env_cmd = [sys.executable, str(script), str(ckpt)]
    for quant in ("f16", "q8_0"):
        rows[f"convert_hf_to_gguf {quant}"] = run(env_cmd + ["--outtype", quant, "--outfile",
                                                           str(work / f"llamacpp-{quant}.gguf")], cwd=script.parent)
        print(f"convert {quant}: {rows[f'convert_hf_to_gguf {quant}'][0]:.1f} s, "
              f"{rows[f'convert_hf_to_gguf {quant}'][1]:.2f} GiB", flush=True)
    quantize = ("import llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); "
                "p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M; "
                "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))")
    rows["llama-quantize f16->q4_k_m"] = run([sys.executable, "-c", quantize, str(work / "llamacpp-f16.gguf"),
                                              str(work / "llamacpp-q4_k_m.gguf")])
    print("\n| job | wall (s) | peak RSS (GiB) |\n|---|---:|---:|")
    for name, (wall, rss) in rows.items():
        print(f"| {name} | {wall:.1f} | {rss:.2f} |")
    for quant in ("f16", "q8_0"):
        ours, theirs = rows[f"slipstream {quant}"], rows[f"convert_hf_to_gguf {quant}"]
        print(f"{quant}: slipstream {theirs[0] / ours[0]:.2f}x faster, peak RSS {ours[1] / theirs[1]:.2f}x theirs")
    q4 = rows["slipstream q4_k_m"][0]
    two_step = rows["convert_hf_to_gguf f16"][0] + rows["llama-quantize f16->q4_k_m"][0]
    print(f"q4_k_m: slipstream {q4:.1f} s vs convert f16 + llama-quantize {two_step:.1f} s ({two_step / q4:.2f}x)")


if __name__ == "__main__":
    main()
