"""Sweep the attention kernels' tile configs on a GPU: forward, the dk/dv kernel and the dq kernel, each timed
over a list of (BLOCK_M, BLOCK_N, num_warps, num_stages) with the others at their defaults, bf16, B=4, Hq=32,
Hkv=8, D=128, causal, S=4096 (or --seq), next to sdpa (flash backend) measured in the same run. Prints the best of
each; the winners go into _fwd_config / _bwd_config by hand (a checked-in table, no run-time autotuning). --save
writes them as JSON, {seq: {"fwd": cfg, "dkdv": cfg, "dq": cfg}}, which `benchmarks/attention.py --tiles` times at
op level in the same session.

    python benchmarks/attention_tune.py [--seq 1024] [--save tiles.json]     # CUDA only
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton.testing

from slipstream.kernels import triton_attention as fwd
from slipstream.kernels import triton_attention_bwd as bwd

FWD = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 4), (128, 32, 4, 4),
       (64, 64, 4, 3), (128, 128, 4, 3), (64, 128, 4, 3), (128, 64, 4, 4)]
DKDV = [(32, 64, 8, 3), (32, 64, 4, 3), (32, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3),
        (64, 128, 8, 3), (16, 128, 4, 3), (32, 128, 8, 2), (64, 128, 8, 2)]
DQ = [(64, 32, 8, 3), (64, 32, 4, 3), (128, 32, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3),
      (128, 64, 8, 3), (128, 16, 4, 3), (128, 32, 8, 2), (128, 64, 8, 2)]
# S <= 2048: short loops and few programs per SM favour smaller tiles and fewer stages; the long-S defaults and
# runners-up stay in for comparison.
SHORT = {"fwd": [(128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (32, 64, 4, 3),
                 (64, 64, 8, 3)],
         "dkdv": [(32, 64, 4, 3), (32, 128, 4, 3), (64, 64, 4, 3), (16, 64, 4, 3), (32, 32, 4, 3), (16, 32, 4, 3),
                  (32, 64, 4, 2), (64, 32, 4, 3), (32, 64, 8, 4)],
         "dq": [(128, 64, 8, 3), (64, 32, 4, 3), (128, 32, 4, 3), (64, 64, 4, 2), (32, 64, 4, 3), (64, 32, 4, 2),
                (32, 32, 4, 3), (128, 64, 8, 4), (64, 128, 8, 3)]}


def ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--save", help="write the winners to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    b, hq, hkv, s, d = 4, 32, 8, args.seq, 128
    grids = SHORT if s <= 2048 else {"fwd": FWD, "dkdv": DKDV, "dq": DQ}
    bf = dict(device="cuda", dtype=torch.bfloat16)
    q = torch.randn(b, hq, s, d, **bf)
    k, v = torch.randn(b, hkv, s, d, **bf), torch.randn(b, hkv, s, d, **bf)
    g = torch.randn(b, hq, s, d, **bf)
    flops = 4 * b * hq * s * s * d / 2
    opts = (None, True, d ** -0.5, -1, 0.0)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, enable_gqa=True)
        sdpa_f = ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        sdpa_b = ms(lambda: torch.autograd.grad(out, (qr, kr, vr), g, retain_graph=True))
    print(f"{torch.cuda.get_device_name()} S={s}: sdpa flash fwd {sdpa_f:.3f} ms ({flops / sdpa_f / 1e9:.0f} TFLOP/s), "
          f"bwd {sdpa_b:.3f} ms ({2.5 * flops / sdpa_b / 1e9:.0f} TFLOP/s)")

    default_fwd, default_bwd = fwd._fwd_config, bwd._bwd_config
    results = {}
    for cfg in grids["fwd"]:
        fwd._fwd_config = lambda *_, c=cfg: c
        try:
            t = ms(lambda: fwd.flash_forward(q, k, v, *opts))
        except Exception as e:  # out of resources: report and go on
            print(f"fwd  {cfg}: {type(e).__name__}")
            continue
        results.setdefault("fwd", []).append((t, cfg))
        print(f"fwd  {cfg}: {t:.3f} ms {flops / t / 1e9:5.0f} TFLOP/s  {sdpa_f / t:.2f}x sdpa", flush=True)
    fwd._fwd_config = default_fwd
    o, lse = fwd.flash_forward(q, k, v, *opts)
    dkdv0, dq0 = default_bwd(128, torch.bfloat16)
    for name, pos in (("dkdv", 0), ("dq", 1)):
        grid = grids[name]
        for cfg in grid:
            pair = (cfg, dq0) if pos == 0 else (dkdv0, cfg)
            bwd._bwd_config = lambda *_, p=pair: p
            try:
                t = ms(lambda: bwd.flash_backward(g, q, k, v, o, lse, *opts))
            except Exception as e:
                print(f"{name:<4} {cfg}: {type(e).__name__}")
                continue
            results.setdefault(name, []).append((t, cfg))
            print(f"{name:<4} {cfg}: bwd {t:.3f} ms {2.5 * flops / t / 1e9:5.0f} TFLOP/s  {sdpa_b / t:.2f}x sdpa",
                  flush=True)
    best = {name: min(rows) for name, rows in results.items()}
    bwd._bwd_config = lambda *_: (best["dkdv"][1], best["dq"][1])
    both = ms(lambda: bwd.flash_backward(g, q, k, v, o, lse, *opts))
    print("best:", {name: cfg for name, (_, cfg) in best.items()},
          f"fwd {best['fwd'][0]:.3f} ms ({sdpa_f / best['fwd'][0]:.2f}x sdpa), "
          f"bwd {both:.3f} ms ({sdpa_b / both:.2f}x sdpa, {2.5 * flops / both / 1e9:.0f} TFLOP/s)")
    if args.save:
        with open(args.save, "w") as f:
            json.dump({str(s): {name: cfg for name, (_, cfg) in best.items()}}, f)


if __name__ == "__main__":
    main()
