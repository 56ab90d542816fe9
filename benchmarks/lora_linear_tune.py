"""Tile sweep for the NF4 quantized matmuls on a GPU: forward (x @ W.T) and input gradient (dy @ W) over tile
configs and both codebook lookups (select tree / tl.gather), each against cuBLAS on the dense bf16 weight in the
same run; then the whole LoRA op (forward + backward) with the winners installed, as benchmarks/lora_linear.py
times it.

    python benchmarks/lora_linear_tune.py            # CUDA only; Llama-3-8B q_proj shape, 4096 tokens
"""
from __future__ import annotations

import itertools

import torch
import triton.testing

import slipstream.kernels.triton_quant_linear as tq
from slipstream.kernels.quant_formats import QuantSpec, quantize

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) as _mm_config returns them (for the transposed kernel the
# second entry is the output tile width, capped at 64 for nf4, and the third the reduction step).
CONFIGS = [(128, 128, 64, 8, 3), (128, 128, 64, 4, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
           (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (128, 128, 32, 4, 4), (64, 64, 64, 4, 3)]


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") / 1e3


def main(tokens: int = 4096, k: int = 4096, n: int = 4096) -> None:
    torch.manual_seed(0)
    w = (torch.randn(n, k, device="cuda") * k ** -0.5).to(torch.bfloat16)
    q = quantize(w, QuantSpec("nf4"))
    weight = (q.packed, q.scales, q.aux, "nf4", q.group, n, k)
    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)
    flops = 2 * tokens * k * n
    dense_f, dense_t = bench(lambda: x @ w.T), bench(lambda: dy @ w)
    print(f"{torch.cuda.get_device_name()}; nf4 {n}x{k}, tokens {tokens}; cuBLAS dense bf16: x@W.T "
          f"{dense_f * 1e3:.3f} ms ({flops / dense_f / 1e12:.0f} TFLOP/s), dy@W {dense_t * 1e3:.3f} ms")
    original = tq._mm_config
    best = {}
    for kind, tree, cfg in itertools.product(("fwd", "dx"), (True, False), CONFIGS):
        tq.NF4_TREE = tree
        tq._mm_config = lambda m, dtype, device, cfg=cfg: cfg
        try:
            fn = (lambda: tq.quant_matmul(x, *weight)) if kind == "fwd" else (lambda: tq.quant_matmul_t(dy, *weight))
            t = bench(fn)
        except Exception as e:  # e.g. out of shared memory: report and go on
            print(f"{kind} tree={tree!s:5} {cfg}: failed ({type(e).__name__}: {str(e)[:80]})")
            continue
        base = dense_f if kind == "fwd" else dense_t
        print(f"{kind} tree={tree!s:5} {cfg}: {t * 1e3:7.3f} ms  {flops / t / 1e12:5.0f} TFLOP/s  "
              f"{base / t:.2f}x cuBLAS dense", flush=True)
        if kind not in best or t < best[kind][0]:
            best[kind] = (t, tree, cfg)
    print("best:", {kind: (f"{t * 1e3:.3f} ms", tree, cfg) for kind, (t, tree, cfg) in best.items()})
    tq._mm_config = original


if __name__ == "__main__":
    main()
