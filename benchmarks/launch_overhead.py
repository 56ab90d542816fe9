"""Host time per call of a Triton launch and of each decode-step op, next to the eager ATen code it replaces.

Both open GPU targets (issue 4's NF4 + LoRA layer, issue 7's TTS decode) are host-bound on the GPU machine:
the host takes longer to issue a step than the GPU takes to run it. This script splits that host time:
1. Triton's own launch: an empty kernel with 1 and with 24 arguments;
2. the pieces of our dequantize wrapper: argument checks (`_weight_args`), the launch guard (device context),
   the output allocation, the bare launch, and the whole wrapper;
3. one decode step's ops at Qwen3-TTS 1.7B's talker shapes (1 token, hidden 2048, 16 / 8 heads of 128, 6144
   MLP, 256 cached keys), no grad: slipstream's implementation (what an optimized model runs: the no-grad twin
   calls it), the same op through torch.library's dispatcher, and the Hugging Face eager ops it replaces.
Host: time until the last of `--calls` back-to-back calls returns; wall: until the device is done too. A row
whose host time exceeds its wall time per call by little is host-bound.

    python benchmarks/launch_overhead.py                                         # CUDA
    TRITON_INTERPRET=1 python benchmarks/launch_overhead.py --device cpu --calls 3   # checks the script only
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import eager_rms_norm, eager_rope
from slipstream.kernels import dispatch
from slipstream.kernels.quant_formats import QuantSpec, quantize
from slipstream.kernels.registry import IMPLEMENTATIONS


@triton.jit
def _noop(X):
    pass


@triton.jit
def _noop_24(X, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19,
             B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr):
    pass


def host_and_wall(fn: Callable[[], object], calls: int, warmup: int, device: str = "cuda") -> tuple[float, float]:
    """Seconds per call of `calls` back-to-back calls (after `warmup` untimed ones): until the last call returns
    (host), and until the device is done (wall)."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    sync()
    return host, (time.perf_counter() - start) / calls


def per_call(fn: Callable[[], object], calls: int, rounds: int, device: str) -> tuple[float, float]:
    """(host, wall) microseconds per call: medians over rounds of `calls` back-to-back calls."""
    hosts, walls = zip(*(host_and_wall(fn, calls, 1 if i == 0 else 0, device) for i in range(rounds)))
    return statistics.median(hosts) * 1e6, statistics.median(walls) * 1e6


def eager_attention(q, k, v, scale):  # sdpa_attention_forward in decode: repeat_kv, then sdpa without a mask
    groups = q.shape[1] // k.shape[1]
    k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(q.shape[0], -1, *k.shape[2:])
    v = v[:, :, None].expand(-1, -1, groups, -1, -1).reshape(q.shape[0], -1, *v.shape[2:])
    return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=False)


def op_rows(device: str, dtype: torch.dtype):
    """(name, slipstream implementation, dispatcher op, eager) closures for one decode step's ops (small shapes on
    CPU, where the interpreter only checks the script)."""
    hidden, heads, kv_heads, d, inter, cached = (2048, 16, 8, 128, 6144, 256) if device == "cuda" else \
        (128, 4, 2, 32, 256, 16)
    opt = dict(device=device, dtype=dtype)
    x, w = torch.randn(1, 1, hidden, **opt), torch.randn(hidden, **opt)
    q, k = torch.randn(1, heads, 1, d, **opt), torch.randn(1, kv_heads, 1, d, **opt)
    ang = torch.randn(1, 1, d // 2, device=device).repeat(1, 1, 2)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    gate, up = torch.randn(1, 1, inter, **opt), torch.randn(1, 1, inter, **opt)
    kc, vc = torch.randn(1, kv_heads, cached, d, **opt), torch.randn(1, kv_heads, cached, d, **opt)
    scale = d ** -0.5
    ops = torch.ops.slipstream
    impl = {name: IMPLEMENTATIONS[getattr(ops, name).default] for name in ("rms_norm", "rope", "swiglu", "attention")}
    yield ("rms_norm", lambda: impl["rms_norm"](x, w, 1e-6, 0.0, True),
           lambda: ops.rms_norm(x, w, 1e-6, 0.0, True), lambda: eager_rms_norm(x, w))
    yield ("rope", lambda: impl["rope"](q, k, cos, sin), lambda: ops.rope(q, k, cos, sin),
           lambda: eager_rope(q, k, cos, sin))
    yield ("swiglu", lambda: impl["swiglu"](gate, up), lambda: ops.swiglu(gate, up),
           lambda: F.silu(gate) * up)
    attention_args = (q, kc, vc, None, False, scale, -1, 0.0, 0.0, 0)
    yield ("attention (decode)", lambda: impl["attention"](*attention_args), lambda: ops.attention(*attention_args),
           lambda: eager_attention(q, kc, vc, scale))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter: checks the script only)"
    print(f"{name} · torch {torch.__version__} · triton {triton.__version__} · host / wall us per call, "
          f"{args.calls} calls back to back, median of {args.rounds} rounds")

    def row(label: str, fn: Callable[[], object]) -> float:
        host, wall = per_call(fn, args.calls, args.rounds, device)
        print(f"  {label:<46} host {host:8.1f}  wall {wall:8.1f}", flush=True)
        return host

    with torch.no_grad(), (dispatch.force_triton_on_cpu() if device == "cpu" else contextlib.nullcontext()):
        x = torch.zeros(16, device=device)
        print("Triton's launch")
        row("empty kernel, 1 argument", lambda: _noop[(1,)](x))
        ints = list(range(1, 20))
        row("empty kernel, 20 arguments + 4 constexprs",
            lambda: _noop_24[(1,)](x, *ints, B1=16, B2=32, B3=64, B4=1))

        from slipstream.kernels import triton_quant_linear as tq
        from slipstream.kernels.triton_utils import cdiv, launch_guard
        n = k = 4096 if device == "cuda" else 64
        qw = quantize(torch.randn(n, k, device=device) * k ** -0.5, QuantSpec("nf4"))
        weight = (qw.packed, qw.scales, qw.aux, "nf4", qw.group, n, k)
        wargs, wkw = tq._weight_args(*weight)
        out = torch.empty(n, k, device=device, dtype=dtype)
        block_n, block_k = (128, 64) if device == "cuda" else (32, 32)

        def bare():
            tq._dequant_kernel[(cdiv(n, block_n), cdiv(k, block_k))](
                *wargs, out, n, k, wkw["stride_p"], wkw["n_groups"], wkw["group"], **tq._format_args(wkw),
                BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, enable_fp_fusion=False)

        def guard():
            with launch_guard(tq._dequant_kernel, qw.packed):
                pass
        print(f"NF4 dequantize of a {n} x {k} weight, by piece")
        row("_weight_args (checks, contiguous views)", lambda: tq._weight_args(*weight))
        row("launch_guard enter + exit", guard)
        row("torch.empty of the output", lambda: torch.empty(n, k, device=device, dtype=dtype))
        row("bare launch", bare)
        row("dequantize(): all of the above", lambda: tq.dequantize(*weight, dtype=dtype))

        print("One decode step's ops (Qwen3-TTS 1.7B talker shapes, 1 token), no grad")
        for label, ours, via_dispatcher, eager in op_rows(device, dtype):
            mine = row(f"{label}: slipstream", ours)
            row(f"{label}: through the dispatcher", via_dispatcher)
            base = row(f"{label}: eager ATen ops", eager)
            print(f"  {'':<46} slipstream / eager host time: {mine / base:.2f}x")


if __name__ == "__main__":
    main()
