"""vLLM export speed and memory: slipstream's writer against compressed-tensors' own compressor, same checkpoint, same
run.

    python benchmarks/vllm_export.py [--work DIR]

Builds a Qwen2.5-0.5B-shaped bf16 checkpoint (494M parameters, random weights, the real Qwen2 tokenizer) once (the
same one benchmarks/gguf_export.py builds), then times whole processes (wall clock, peak RSS from wait4):
`slipstream export vllm` dense, w8a8 and w4a16, and the compressed-tensors route for the same schemes (transformers
loads the checkpoint, compressed-tensors' apply_quantization_config + calculate_qparams give the scales,
ModelCompressor.compress_model packs, save_pretrained + update_config write) plus transformers' plain
load + save_pretrained for dense.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_export import checkpoint  # noqa: E402  (the same Qwen2.5-0.5B-shaped checkpoint)
from process_stats import run  # noqa: E402

PRESETS = {"w8a8": "W8A8", "w4a16": "W4A16"}


def theirs(ckpt: str, out: str, scheme: str) -> None:
    """compressed-tensors' own route (as llm-compressor's save path runs it), scales from min/max like ours."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    if scheme == "dense":
        model.save_pretrained(out, max_shard_size="5GB")
        return
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    config = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(PRESETS[scheme], ["Linear"])},
                                ignore=["lm_head"])
    apply_quantization_config(model, config)
    with torch.no_grad():
        for module in model.modules():
            if not hasattr(module, "quantization_scheme"):
                continue
            args, w = module.quantization_scheme.weights, module.weight
            if args.strategy == "group":
                g = w.reshape(w.shape[0], -1, args.group_size)
                lo, hi = g.amin(-1), g.amax(-1)
            else:
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            scale, zero = calculate_qparams(lo, hi, args)
            module.weight_scale.data = scale.to(module.weight_scale.dtype).reshape(module.weight_scale.shape)
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data = zero.to(module.weight_zero_point.dtype).reshape(
                    module.weight_zero_point.shape)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(out, max_shard_size="5GB")
    compressor.update_config(out)


def _size(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the checkpoint and outputs (kept)")
    parser.add_argument("--theirs", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.theirs:
        return theirs(*args.theirs)
    work = args.work or Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    ckpt = checkpoint(work)
    rows = {}
    for scheme in ("dense", "w8a8", "w4a16"):
        ours, ref = work / f"ours-{scheme}", work / f"ct-{scheme}"
        for d in (ours, ref):
            shutil.rmtree(d, ignore_errors=True)
        quant = [] if scheme == "dense" else ["--quant", scheme]
        rows[f"slipstream {scheme}"] = run([sys.executable, "-m", "slipstream", "export", "vllm", str(ckpt), str(ours),
                                            "--quiet", *quant]) + (_size(ours),)
        label = "transformers save_pretrained dense" if scheme == "dense" else f"compressed-tensors {scheme}"
        rows[label] = run([sys.executable, __file__, "--theirs", str(ckpt), str(ref), scheme]) + (_size(ref),)
        for name in (f"slipstream {scheme}", label):
            print(f"{name}: {rows[name][0]:.1f} s, {rows[name][1]:.2f} GiB peak RSS, {rows[name][2]:.2f} GiB written",
                  flush=True)
    print("\n| job | wall (s) | peak RSS (GiB) | written (GiB) |\n|---|---:|---:|---:|")
    for name, (wall, rss, size) in rows.items():
        print(f"| {name} | {wall:.1f} | {rss:.2f} | {size:.2f} |")
    bf16 = 494_032_768 * 2 / 2**30
    for scheme, label in (("dense", "transformers save_pretrained dense"), ("w8a8", "compressed-tensors w8a8"),
                          ("w4a16", "compressed-tensors w4a16")):
        ours, ref = rows[f"slipstream {scheme}"], rows[label]
        print(f"{scheme}: slipstream {ref[0] / ours[0]:.2f}x faster, peak RSS {ours[1]:.2f} GiB = "
              f"{ours[1] / ref[1]:.2f}x theirs, {ours[1] / bf16:.2f}x the model's bf16 size ({bf16:.2f} GiB)")


if __name__ == "__main__":
    main()
