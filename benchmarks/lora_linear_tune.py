"""NF4 quantized matmuls on a GPU, each against cuBLAS on the dense bf16 weight in the same run:
1. by batch rows: the in-register kernel vs dequantize-into-a-buffer + cuBLAS (where lora_linear's
   FUSED_MAX_ROWS switches between them), forward (x @ W.T) and input gradient (dy @ W);
2. `--sweep`: tile configs and both codebook lookups (select tree / tl.gather) of the in-register kernels at
   4096 rows.

    python benchmarks/lora_linear_tune.py [--sweep]   # CUDA only; Llama-3-8B q_proj shape (4096 x 4096)
"""
from __future__ import annotations

import argparse
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


def by_rows(w, weight, k: int, n: int) -> None:
    deq = bench(lambda: tq.dequantize(*weight, torch.bfloat16))
    print(f"dequantize {n}x{k} nf4 -> bf16: {deq * 1e6:.1f} us ({n * k * 2.5 / deq / 1e9:.0f} GB/s)")
    for rows in (1, 16, 64, 128, 256, 1024, 4096):
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16)
        dense = bench(lambda: x @ w.T), bench(lambda: dy @ w)
        fused = bench(lambda: tq.quant_matmul(x, *weight)), bench(lambda: tq.quant_matmul_t(dy, *weight))
        buffered = (bench(lambda: x @ tq.dequantize(*weight, torch.bfloat16).T),
                    bench(lambda: dy @ tq.dequantize(*weight, torch.bfloat16)))
        print(f"rows {rows:>5}: " + "   ".join(
            f"{what} dense {d * 1e6:7.1f} us, in-register {f * 1e6:7.1f} us ({d / f:.2f}x), "
            f"buffer+cuBLAS {b * 1e6:7.1f} us ({d / b:.2f}x)"
            for what, d, f, b in zip(("fwd", "dx"), dense, fused, buffered)), flush=True)


def main(sweep: bool, tokens: int = 4096, k: int = 4096, n: int = 4096) -> None:
    torch.manual_seed(0)
    w = (torch.randn(n, k, device="cuda") * k ** -0.5).to(torch.bfloat16)
    q = quantize(w, QuantSpec("nf4"))
    weight = (q.packed, q.scales, q.aux, "nf4", q.group, n, k)
    print(torch.cuda.get_device_name(), "(ratios: dense time / this time; above 1 is faster than dense)")
    by_rows(w, weight, k, n)
    if not sweep:
        return
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also sweep the in-register kernels' tiles")
    main(parser.parse_args().sweep)
