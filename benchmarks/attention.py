"""Attention: slipstream's fused kernels vs PyTorch sdpa (GPU), and the CPU dispatch overhead.

    python benchmarks/attention.py            # CUDA: flash kernel vs sdpa (flash backend) and decode bandwidth
    python benchmarks/attention.py --cpu      # CPU: a tiny model with and without fuse-attention (same run)
    python benchmarks/attention.py --tiles tiles.json   # CUDA, with attention_tune.py --save's tiles at their S

GPU: bf16, B=4, Hq=32, Hkv=8, D=128, causal, S in 1024/4096/16384: forward and backward (fwd+bwd minus fwd) time
against `scaled_dot_product_attention` with its flash backend measured in the same run (and torch's default pick,
cuDNN on Hopper, for reference), as TFLOP/s next to a measured bf16 matmul peak (backward counted as 2.5x the
forward's FLOPs); decode
(q length 1 over T=32768) as bandwidth next to the measured copy bandwidth. CPU: the dispatcher must not make the
model slower than without it (the reference path runs the original computation); the ratio is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time

import torch
import torch.nn.functional as F


def cuda_time(fn, reps: int = 20, rounds: int = 3) -> float:
    """Seconds per call: the median over `rounds` of `reps` back-to-back calls (host overhead included where the
    GPU would wait for it, as in a model's stream of kernels)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return sorted(times)[rounds // 2]


@contextlib.contextmanager
def tiles_for(s: int, tiles: dict):
    """The kernels with attention_tune.py's winners for this S (if it was tuned), the checked-in tiles otherwise."""
    from slipstream.kernels import triton_attention as fwd
    from slipstream.kernels import triton_attention_bwd as bwd
    chosen = tiles.get(str(s))
    if chosen is None:
        yield
        return
    saved = fwd._fwd_config, bwd._bwd_config
    fwd._fwd_config = lambda *_: tuple(chosen["fwd"])
    bwd._bwd_config = lambda *_: (tuple(chosen["dkdv"]), tuple(chosen["dq"]))
    print(f"S={s}: tuned tiles {chosen}")
    try:
        yield
    finally:
        fwd._fwd_config, bwd._bwd_config = saved


def gpu(tiles: dict) -> None:
    from slipstream.kernels.attention import attention
    bf = dict(device="cuda", dtype=torch.bfloat16)
    a, b = torch.randn(8192, 8192, **bf), torch.randn(8192, 8192, **bf)
    peak = 2 * 8192 ** 3 / cuda_time(lambda: a @ b)
    src = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() / cuda_time(lambda: dst.copy_(src))
    print(f"{torch.cuda.get_device_name()}: bf16 matmul {peak / 1e12:.0f} TFLOP/s, copy {copy_bw / 1e9:.0f} GB/s")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    b_, hq, hkv, d = 4, 32, 8, 128
    for s in (1024, 4096, 16384):
        q = torch.randn(b_, hq, s, d, **bf, requires_grad=True)
        k, v = (torch.randn(b_, hkv, s, d, **bf, requires_grad=True) for _ in range(2))
        g = torch.randn(b_, hq, s, d, **bf)
        flops = 4 * b_ * hq * s * s * d / 2  # causal: half the score matrix

        def ours():
            return attention(q, k, v, causal=True)

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def both(fn):  # forward + backward, grads returned rather than accumulated into .grad
            return lambda: torch.autograd.grad(fn(), (q, k, v), g)
        with tiles_for(s, tiles):
            row = {"ours": (cuda_time(ours), cuda_time(both(ours)))}
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa-flash"] = (cuda_time(sdpa), cuda_time(both(sdpa)))
        row["sdpa-default"] = (cuda_time(sdpa), cuda_time(both(sdpa)))  # torch's own pick (cuDNN on Hopper)
        (f, fb), (rf, rfb) = row["ours"], row["sdpa-flash"]
        print(f"S={s:>5}: fwd {f * 1e3:7.2f} ms, {flops / f / 1e12:4.0f} TFLOP/s ({flops / f / peak:.0%} of peak), "
              f"{rf / f:.2f}x sdpa-flash; bwd {(fb - f) * 1e3:7.2f} ms, {2.5 * flops / (fb - f) / 1e12:4.0f} "
              f"TFLOP/s, {(rfb - rf) / (fb - f):.2f}x sdpa-flash; fwd+bwd {rfb / fb:.2f}x sdpa-flash")
        print("         " + "; ".join(f"{name} fwd {a * 1e3:.2f} ms fwd+bwd {c * 1e3:.2f} ms"
                                      for name, (a, c) in row.items()))
    t = 32768
    q = torch.randn(b_, hq, 1, d, **bf)
    k, v = (torch.randn(b_, hkv, t, d, **bf) for _ in range(2))
    kv_bytes = 2 * k.numel() * 2
    import triton.testing
    for how, dec in (("back to back", cuda_time(lambda: attention(q, k, v, causal=True))),
                     ("do_bench, L2 flushed", triton.testing.do_bench(lambda: attention(q, k, v, causal=True),
                                                                     return_mode="median") / 1e3)):
        print(f"decode T={t} ({how}): {dec * 1e6:.0f} us, {kv_bytes / dec / 1e9:.0f} GB/s "
              f"({kv_bytes / dec / copy_bw:.0%} of copy)")


def cpu() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    import slipstream
    torch.set_num_threads(1)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    with_attn = slipstream.optimize(copy.deepcopy(base), pipeline="fuse-rms-norm, fuse-swiglu, fuse-rope, fuse-attention")
    without = slipstream.optimize(copy.deepcopy(base), pipeline="fuse-rms-norm, fuse-swiglu, fuse-rope")
    ids = torch.randint(0, 256, (2, 256))

    times: dict[str, list[float]] = {"with": [], "without": []}
    with torch.no_grad():
        with_attn(ids), without(ids)
        for _ in range(15):  # interleaved, so load on the machine hits both alike
            for name, model in (("with", with_attn), ("without", without)):
                start = time.perf_counter()
                model(ids)
                times[name].append(time.perf_counter() - start)
    a, b = min(times["with"]), min(times["without"])
    print(f"CPU forward, batch 2 x 256: with fuse-attention {a * 1e3:.2f} ms, without {b * 1e3:.2f} ms, "
          f"ratio {a / b:.3f} (<= 1.0 means no slowdown)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--tiles", help="JSON from attention_tune.py --save: time those tiles at their S")
    args = parser.parse_args()
    if args.cpu:
        cpu()
    elif torch.cuda.is_available():
        gpu(json.load(open(args.tiles)) if args.tiles else {})
    else:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --cpu for the CPU comparison")
