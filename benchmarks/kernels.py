"""Per-kernel speed of slipstream's Triton ops against PyTorch eager (the Hugging Face code they replace), bf16,
forward and forward+backward, at LLM sizes, as achieved memory bandwidth next to the device's measured
device-to-device copy bandwidth (the ceiling for these memory-bound ops).

    python benchmarks/kernels.py                 # on a CUDA machine
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke   # CPU: tiny shapes through the interpreter, to
                                                              # check the script itself; its timings mean nothing
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch
import torch.nn.functional as F

import slipstream.kernels as K

SIZES = {  # (tokens, hidden, intermediate, q heads, kv heads, head dim)
    "llm": (8192, 4096, 14336, 32, 8, 128),
    "smoke": (64, 97, 130, 4, 2, 16),
}


def eager_rms_norm(x, w, eps=1e-6):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def eager_rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def bench(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median seconds per call. CUDA: triton's do_bench (events, L2 flushed between calls, which also lets the
    host queue each call ahead, so Python launch overhead is hidden as it is in a model's stream of kernels).
    CPU: wall clock."""
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=max(reps, 20), return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: str, reps: int) -> float:
    src = torch.empty(256 * 2**20 if device == "cuda" else 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / bench(lambda: dst.copy_(src), device, reps)


def cases(device: str, size: str):
    t, h, inter, hq, hkv, d = SIZES[size]
    bf = dict(dtype=torch.bfloat16, device=device)
    x, w = torch.randn(t, h, **bf), torch.randn(h, **bf)
    g, u = torch.randn(t, inter, **bf), torch.randn(t, inter, **bf)
    q, k = torch.randn(1, hq, t, d, **bf), torch.randn(1, hkv, t, d, **bf)
    ang = torch.randn(1, t, d // 2, device=device).repeat(1, 1, 2)
    cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
    e = 2  # bytes per bf16 element; bytes are the minimum each op must move (read inputs, write outputs)
    yield "rms_norm", (x, w), lambda a, b: K.rms_norm(a, b), eager_rms_norm, 2 * x.numel() * e, 5 * x.numel() * e
    yield "swiglu", (g, u), K.swiglu, lambda a, b: F.silu(a) * b, 3 * g.numel() * e, 8 * g.numel() * e
    yield ("geglu-tanh", (g, u), lambda a, b: K.geglu(a, b, "tanh"),
           lambda a, b: F.gelu(a, approximate="tanh") * b, 3 * g.numel() * e, 8 * g.numel() * e)
    qk = (q.numel() + k.numel()) * e
    yield "rope", (q, k, cos, sin), K.rope, eager_rope, 2 * qk + 2 * cos.numel() * e, 4 * qk + 2 * cos.numel() * e


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


def run_case(name, inputs, ours, eager, fwd_bytes, fwdbwd_bytes, device, reps, ceiling):
    # the first two inputs are the differentiated activations (x/weight, gate/up, q/k); cos/sin are not
    # the first two inputs are the differentiated activations (x/weight, gate/up, q/k); cos/sin are not
    grads = [t.detach().clone().requires_grad_(i < 2) for i, t in enumerate(inputs)]
    with torch.no_grad():
        upstream = [torch.randn_like(o) for o in _tuple(ours(*inputs))]  # made once, outside the timed step
    rows = []
    for label, fn in (("slipstream", ours), ("eager", eager)):
        with torch.no_grad():
            fwd = bench(lambda: fn(*inputs), device, reps)

        def step():  # grads returned, not accumulated into .grad (that would add a read-modify-write per step)
            torch.autograd.grad(_tuple(fn(*grads)), grads[:2], upstream)
        both = bench(step, device, reps)
        rows.append((label, fwd, both))
    (_, f_ours, b_ours), (_, f_eager, b_eager) = rows
    for label, fwd, both in rows:
        print(f"{name:<11} {label:<10} fwd {fwd * 1e6:9.1f} us {fwd_bytes / fwd / 1e9:8.1f} GB/s "
              f"({fwd_bytes / fwd / ceiling:5.1%})   fwd+bwd {both * 1e6:9.1f} us "
              f"{fwdbwd_bytes / both / 1e9:8.1f} GB/s ({fwdbwd_bytes / both / ceiling:5.1%})")
    print(f"{name:<11} speedup vs eager: fwd {f_eager / f_ours:.2f}x, fwd+bwd {b_eager / b_ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the Triton interpreter")
    parser.add_argument("--reps", type=int, default=None,
                        help="CUDA: do_bench's milliseconds per measurement (default 50, at least 20); --smoke: "
                             "timed calls per measurement (default 2)")
    args = parser.parse_args()
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--smoke runs the Triton kernels on CPU: set TRITON_INTERPRET=1")
        device, size, reps = "cpu", "smoke", args.reps or 2
        ctx = K.force_triton_on_cpu()
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --smoke (with TRITON_INTERPRET=1) on CPU")
    else:
        import contextlib
        device, size, reps, ctx = "cuda", "llm", args.reps or 50, contextlib.nullcontext()
    torch.manual_seed(0)
    ceiling = copy_bandwidth(device, reps)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (interpreter: timings meaningless)"
    print(f"{name}; torch {torch.__version__}; sizes {SIZES[size]}; copy bandwidth {ceiling / 1e9:.1f} GB/s")
    with ctx:
        for case in cases(device, size):
            run_case(*case, device, reps, ceiling)


if __name__ == "__main__":
    main()
