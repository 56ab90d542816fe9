"""Host overhead of the NF4 LoRA op on a GPU: wall and CPU time per forward + backward of one 4096 x 4096 layer
(4096 tokens, r=16), as an optimized model runs it (the op's grad twin) and through torch.library's dispatcher,
next to dense bf16 + LoRA; the host cost of each piece; whether a step synchronizes; then cProfile's top Python
functions and torch.profiler's CUDA time per op. Diagnostic for the gap between benchmarks/lora_linear.py (wall-clock medians) and the kernels' GPU
time.

    python benchmarks/lora_linear_overhead.py        # CUDA only
"""
from __future__ import annotations

import cProfile
import pstats
import traceback
import warnings

import torch
import torch.nn.functional as F

from launch_overhead import host_and_wall
from slipstream.kernels.lora_linear import lora_linear_op
from slipstream.kernels.quant_formats import QuantSpec, quantize
from slipstream.kernels.registry import grad_function


def main(tokens: int = 4096, k: int = 4096, n: int = 4096, r: int = 16) -> None:
    w = (torch.randn(n, k, device="cuda") * k ** -0.5).bfloat16()
    q = quantize(w, QuantSpec("nf4"))
    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    a = (torch.randn(r, k, device="cuda") * 0.01).bfloat16().requires_grad_()
    b = (torch.randn(n, r, device="cuda") * 0.01).bfloat16().requires_grad_()
    g = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)

    twin = grad_function(torch.ops.slipstream.lora_linear.default)

    def fused(op=twin):
        y = op(x, q.packed, q.scales, q.aux, "nf4", q.group, n, None, [x], [a], [b], [2.0])
        return torch.autograd.grad(y, (x, a, b), g)

    def via_dispatcher():
        return fused(lora_linear_op)

    def dense():
        y = F.linear(x, w) + F.linear(F.linear(x, a), b) * 2.0
        return torch.autograd.grad(y, (x, a, b), g)

    for fn in (fused, via_dispatcher, dense) * 2:
        host, wall = host_and_wall(fn, 20, 5)
        print(f"{fn.__name__}: host {host * 1e6:.0f} us/iter, wall {wall * 1e6:.0f} us/iter", flush=True)
    from slipstream.kernels.lora_linear import base_weight, quant_linear_grad_input_op
    xd = x.detach()
    pieces = {"dequantize (Triton)": lambda: base_weight(q.packed, q.scales, q.aux, "nf4", q.group, n, k, xd.dtype),
              "lora_linear forward, no grad": lambda: lora_linear_op(xd, q.packed, q.scales, q.aux, "nf4", q.group,
                                                                     n, None, [xd], [a], [b], [2.0]),
              "quant_linear_grad_input": lambda: quant_linear_grad_input_op(g, q.packed, q.scales, q.aux, "nf4",
                                                                            q.group, k),
              "F.linear (cuBLAS)": lambda: F.linear(xd, w)}
    with torch.no_grad():
        for name, piece in pieces.items():  # host cost per call: 10 calls queue well under the GPU's backlog
            host, wall = host_and_wall(piece, 10, 3)
            print(f"{name}: host {host * 1e6:.0f} us/call, wall {wall * 1e6:.0f} us/call", flush=True)
    for fn in (fused, dense):  # does a step wait for the GPU? (a sync makes host time = GPU time + overhead)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            fn()
            torch.cuda.set_sync_debug_mode("default")
        # The mode's own notice ("Synchronization debug mode is a prototype feature and does not yet detect all
        # synchronizing operations", once per process) is not a sync: session 8's log counted it as one.
        messages = [str(w.message) for w in caught]
        syncs = [m.splitlines()[0] for m in messages
                 if "synchronizing CUDA operation" in m and not m.startswith("Synchronization debug mode")]
        print(f"{fn.__name__}: {len(syncs)} synchronizing calls per step", *syncs[:5], sep="\n  ", flush=True)
        if syncs:  # where the first one is
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
            except RuntimeError:
                traceback.print_exc(limit=-6)
            finally:
                torch.cuda.set_sync_debug_mode("default")
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
