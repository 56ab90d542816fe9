"""Run every Triton kernel on one device against float64 references: the check a GPU session runs.

    python tests/kernels/device_check.py --device cuda            # on a GPU machine (TRITON_INTERPRET unset)
    TRITON_INTERPRET=1 python tests/kernels/device_check.py --device cpu   # the same code under the interpreter

CI runs the CPU form (tests/kernels/test_device_check.py) so the script itself is known to work; the `gpu` mark
runs the CUDA form in a fresh process (the pytest process has TRITON_INTERPRET=1 set for the CPU kernel tests).
Exit code 0 when every check is within the tolerance table, 1 otherwise; one line per check.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_testing import f64_oracle  # noqa: E402

import slipstream.kernels as K  # noqa: E402
from slipstream.debug.tolerance import max_rel_error, tolerance  # noqa: E402


def _grads(out, inputs, go):
    outs = out if isinstance(out, tuple) else (out,)
    gos = go if isinstance(go, tuple) else (go,)
    return torch.autograd.grad(outs, inputs, gos)


def _compare(name, fn, oracle, inputs, dtype) -> bool:
    """fn(*inputs) vs oracle(*inputs in float64): outputs and grads of the first two inputs (the activations;
    rope's cos/sin and attention's v are inputs too, v is differentiated as well), max relative error."""
    n_diff = 3 if name.startswith(("attention", "lora")) else 2
    xs = [x.detach().clone().requires_grad_(i < n_diff) for i, x in enumerate(inputs)]
    refs = [x.detach().double().requires_grad_(i < n_diff) for i, x in enumerate(inputs)]
    out, want = fn(*xs), oracle(*refs)
    outs, wants = (out if isinstance(out, tuple) else (out,)), (want if isinstance(want, tuple) else (want,))
    gos = tuple(torch.randn_like(w) for w in wants)
    diff = [x for x in xs if x.requires_grad]
    got = _grads(outs, diff, tuple(g.to(o.dtype) for g, o in zip(gos, outs)))
    exp = _grads(wants, [r for r in refs if r.requires_grad], gos)
    errors = [max_rel_error(a, b) for a, b in zip(list(outs) + list(got), list(wants) + list(exp))]
    ok = max(errors) <= tolerance(dtype).max_rel
    print(f"{'ok ' if ok else 'BAD'} {name:<34} {str(dtype):<15} max rel err {max(errors):.2e}")
    return ok


def _rms_oracle(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rope_oracle(q, k, cos, sin, interleaved=False):
    def rot(x):
        if interleaved:  # pairs (2i, 2i + 1): (-x1, x0), GPT-J's layout
            return torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), -1)
    c, s = cos[:, None], sin[:, None]
    return q * c + rot(q) * s, k * c + rot(k) * s


def _keep_mask(b, h, s, t, p, seed, device):
    """The keep decisions the flash kernels draw (Triton, so the CPU form must be under the interpreter)."""
    from slipstream.kernels.triton_attention import dropout_keep_mask
    return dropout_keep_mask(b, h, s, t, p, seed, torch.device(device))


def _varlen_oracle(q, k, v, cu, scale):
    """The dense float64 oracle per packed sequence, on [1, H, n, D] views."""
    pieces = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        dense = [x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v)]
        pieces.append(f64_oracle(*dense, None, True, scale)[0].transpose(0, 1))
    return torch.cat(pieces)


def _lora_checks(device: str, small: bool, dtype: torch.dtype):
    """lora_linear on each quantized format: x, A and B differentiated, against x W^T + s (x A^T) B^T in float64 on
    the exactly dequantized W."""
    from slipstream.kernels.lora_linear import lora_linear_op
    from slipstream.kernels.quant_formats import QuantSpec, quantize

    tokens, k, n, r = (37, 96, 200, 8) if small else (1024, 4096, 4096, 16)
    for label, spec in (("nf4", QuantSpec("nf4")), ("int4-g128-asym", QuantSpec("int4", 128, symmetric=False)),
                        ("int8", QuantSpec("int8")), ("fp8", QuantSpec("fp8"))):
        q = quantize(torch.randn(n, k, device=device) * k ** -0.5, spec)
        w64 = q.dequantize(torch.float32).double()
        inputs = (torch.randn(tokens, k, device=device, dtype=dtype), torch.randn(r, k, device=device, dtype=dtype)
                  * k ** -0.5, torch.randn(n, r, device=device, dtype=dtype) * r ** -0.5)
        yield (f"lora_linear {label}",
               lambda x, a, b, q=q: lora_linear_op(x, q.packed, q.scales, q.aux, q.fmt, q.group, n, None, [x], [a],
                                                   [b], [2.0]),
               lambda x, a, b, w64=w64: x @ w64.t() + 2.0 * (x @ a.t()) @ b.t(), inputs, dtype)


def checks(device: str, small: bool):
    rows, hidden, s, t = (37, 97, 17, 150) if small else (4096, 4096, 1024, 4096)
    for dtype in (torch.float32, torch.bfloat16):
        r = dict(device=device, dtype=dtype)
        yield "rms_norm", lambda x, w: K.rms_norm(x, w, 1e-6), _rms_oracle, (
            torch.randn(rows, hidden, **r), torch.randn(hidden, **r) + 1), dtype
        g, u = torch.randn(rows, hidden, **r), torch.randn(rows, hidden, **r)
        yield "swiglu", K.swiglu, lambda a, b: torch.nn.functional.silu(a) * b, (g, u), dtype
        yield "geglu-tanh", lambda a, b: K.geglu(a, b, "tanh"), \
            lambda a, b: torch.nn.functional.gelu(a, approximate="tanh") * b, (g, u), dtype
        ang = torch.randn(2, s, 32, device=device)
        for label, (il, angles) in {"rope": (False, ang.repeat(1, 1, 2)),
                                    "rope interleaved": (True, ang.repeat_interleave(2, -1))}.items():
            yield label, (lambda q, k, c, sn, il=il: K.rope(q, k, c, sn, interleaved=il)), \
                (lambda q, k, c, sn, il=il: _rope_oracle(q, k, c, sn, il)), \
                (torch.randn(2, 4, s, 64, **r), torch.randn(2, 2, s, 64, **r), angles.cos().to(dtype),
                 angles.sin().to(dtype)), dtype
        for label, (sq, tk, kw) in {"attention causal gqa": (s, s, {}),
                                    "attention window softcap": (s, s, dict(window=7, softcap=2.0)),
                                    "attention decode": (1, t, {})}.items():
            q, k, v = torch.randn(2, 8, sq, 64, **r), torch.randn(2, 2, tk, 64, **r), torch.randn(2, 2, tk, 64, **r)
            scale = 64 ** -0.5
            yield label, (lambda q, k, v, kw=kw: K.attention(q, k, v, causal=True, scale=scale, **kw)), \
                (lambda q, k, v, kw=kw: f64_oracle(q, k, v, None, True, scale, **kw)), (q, k, v), dtype
        q, k, v = torch.randn(2, 8, s, 64, **r), torch.randn(2, 2, s, 64, **r), torch.randn(2, 2, s, 64, **r)
        keep = _keep_mask(2, 8, s, s, 0.2, 11, device)
        yield "attention dropout", \
            (lambda q, k, v: K.attention(q, k, v, causal=True, scale=0.125, dropout_p=0.2, seed=11)), \
            (lambda q, k, v, keep=keep: f64_oracle(q, k, v, None, True, 0.125, keep=keep, dropout_p=0.2)), \
            (q, k, v), dtype
        lengths = [s, 1, 5, 2 * s + 3]  # packed sequences of mixed length, one of a single token
        cu = torch.tensor([0] + lengths, device=device).cumsum(0, dtype=torch.int32)
        q, k, v = torch.randn(sum(lengths), 8, 64, **r), *(torch.randn(sum(lengths), 2, 64, **r) for _ in range(2))
        yield "attention varlen", \
            (lambda q, k, v, cu=cu, n=max(lengths): K.attention_varlen(q, k, v, cu, cu, n, n, scale=0.125)), \
            (lambda q, k, v, cu=cu: _varlen_oracle(q, k, v, cu, 0.125)), (q, k, v), dtype
        yield from _lora_checks(device, small, dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--only", default="", help="run only the checks whose name contains this text")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--device cpu runs the kernels under the interpreter: set TRITON_INTERPRET=1")
        ctx = K.force_triton_on_cpu()
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device")
        ctx = contextlib.nullcontext()
        print(torch.cuda.get_device_name(), torch.__version__)
    with ctx:
        results = [_compare(name, fn, oracle, inputs, dtype)
                   for name, fn, oracle, inputs, dtype in checks(args.device, small=args.device == "cpu")
                   if args.only in name]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
