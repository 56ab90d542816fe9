"""Host overhead of the NF4 LoRA op on a GPU: wall and CPU time per forward + backward of one 4096 x 4096 layer
(4096 tokens, r=16) next to dense bf16 + LoRA, then cProfile's top Python functions and torch.profiler's CUDA
time per op. Diagnostic for the gap between benchmarks/lora_linear.py (wall-clock medians) and the kernels' GPU
time.

    python benchmarks/lora_linear_overhead.py        # CUDA only
"""
from __future__ import annotations

import cProfile
import pstats
import time

import torch
import torch.nn.functional as F

from slipstream.kernels.lora_linear import lora_linear_op
from slipstream.kernels.quant_formats import QuantSpec, quantize


def main(tokens: int = 4096, k: int = 4096, n: int = 4096, r: int = 16) -> None:
    w = (torch.randn(n, k, device="cuda") * k ** -0.5).bfloat16()
    q = quantize(w, QuantSpec("nf4"))
    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    a = (torch.randn(r, k, device="cuda") * 0.01).bfloat16().requires_grad_()
    b = (torch.randn(n, r, device="cuda") * 0.01).bfloat16().requires_grad_()
    g = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)

    def fused():
        y = lora_linear_op(x, q.packed, q.scales, q.aux, "nf4", q.group, n, None, [x], [a], [b], [2.0])
        return torch.autograd.grad(y, (x, a, b), g)

    def dense():
        y = F.linear(x, w) + F.linear(F.linear(x, a), b) * 2.0
        return torch.autograd.grad(y, (x, a, b), g)

    for fn in (fused, dense, fused, dense):
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn()
        cpu = (time.perf_counter() - start) / 20
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / 20
        print(f"{fn.__name__}: host {cpu * 1e6:.0f} us/iter, wall {wall * 1e6:.0f} us/iter", flush=True)
    profile = cProfile.Profile()
    profile.runcall(lambda: [fused() for _ in range(20)])
    pstats.Stats(profile).sort_stats("tottime").print_stats(18)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            fused()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
