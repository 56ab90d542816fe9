"""slipstream::lora_linear / quant_linear vs float64 on the dequantized weight: forward and backward, every format,
ranks 1/8/64, several adapters, odd features (96 x 200), 1 and 300 tokens, fp32 and bf16, reference and Triton."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, IMPLS, grads, impl_context, leaf, randn

from slipstream.debug.tolerance import max_rel_error, tolerance
from slipstream.kernels.lora_linear import lora_linear, lora_linear_op, quant_linear_op
from slipstream.kernels.quant_formats import QuantSpec, quantize

SPECS = {"int8": QuantSpec("int8"), "fp8": QuantSpec("fp8"), "int4-g32": QuantSpec("int4", 32),
         "int4-g64-asym": QuantSpec("int4", 64, symmetric=False), "nf4": QuantSpec("nf4"),
         "nf4-plain": QuantSpec("nf4", double_quant=False)}
# (format, tokens, ranks, bias): not the full cross product; every format, rank and size appears
CASES = [("dense", 300, (8,), True), ("int8", 1, (1,), True), ("fp8", 300, (64,), False),
         ("int4-g32", 300, (8, 1), False), ("int4-g64-asym", 1, (8,), True), ("nf4", 300, (8,), True),
         ("nf4-plain", 17, (), False), ("nf4", 1, (64, 8), False)]
N, K = 200, 96


def _base(fmt: str):
    w = randn(N, K, scale=0.05)
    if fmt == "dense":
        return w, (w, None, None, "dense", 0)
    q = quantize(w, SPECS[fmt])
    return q.dequantize(torch.float32), (q.packed, q.scales, q.aux, q.fmt, q.group)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt,tokens,ranks,has_bias", CASES)
def test_lora_linear_vs_float64(fmt, tokens, ranks, has_bias, dtype, impl):
    w32, (base, scales, aux, f, group) = _base(fmt)
    if f == "dense":
        base = leaf(base.to(dtype))
    x = leaf(randn(tokens, K, dtype=dtype))
    bias = leaf(randn(N, dtype=dtype)) if has_bias else None
    adapters = [(leaf(randn(tokens, K, dtype=dtype)) if i % 2 else x, leaf(randn(r, K, dtype=dtype, scale=0.1)),
                 leaf(randn(N, r, dtype=dtype, scale=0.1)), 0.5 + i) for i, r in enumerate(ranks)]
    with impl_context(impl):
        out = lora_linear_op(x, base, scales, aux, f, group, N, bias, [a[0] for a in adapters],
                             [a[1] for a in adapters], [a[2] for a in adapters], [a[3] for a in adapters])
        assert out.dtype == dtype and out.shape == (tokens, N)
        inputs = [x] + ([base] if f == "dense" else []) + ([bias] if has_bias else []) + \
            [t for xi, a, b, _ in adapters for t in ((xi,) if xi is not x else ()) + (a, b)]
        go = randn(tokens, N, dtype=dtype)
        got = grads(out, inputs, go)
    # float64 oracle on the same (rounded) inputs and the exactly dequantized weight
    f64 = {id(t): t.detach().double().requires_grad_() for t in inputs}
    x64 = f64[id(x)]
    w64 = f64[id(base)] if f == "dense" else w32.double()
    want = x64 @ w64.t() + (f64[id(bias)] if has_bias else 0)
    for xi, a, b, s in adapters:
        want = want + s * (f64[id(xi)] @ f64[id(a)].t()) @ f64[id(b)].t()
    expected = grads(want, [f64[id(t)] for t in inputs], go.double())
    # relative to each tensor's largest value: these are K- and token-long reductions (see debug/tolerance.py)
    for actual, exact in zip((out, *got), (want, *expected)):
        assert actual.dtype == dtype and not actual.isnan().any()
        assert max_rel_error(actual, exact) <= tolerance(dtype).max_rel


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fmt", ["int4-g32", "nf4"])
def test_quant_linear_matches_lora_linear_without_adapters(fmt, impl):
    _, (packed, scales, aux, f, group) = _base(fmt)
    x = leaf(randn(5, K))
    with impl_context(impl):
        y = quant_linear_op(x, packed, scales, aux, f, group, N, None)
        (dx,) = grads(y, [x], torch.ones_like(y))
        y2 = lora_linear(x, packed, scales=scales, aux=aux, fmt=f, group=group, out_features=N)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    assert dx.shape == x.shape and not dx.isnan().any()


def test_bad_arguments_name_the_problem():
    w = randn(N, K)
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        lora_linear_op(randn(2, K), w, None, None, "int3", 0, N, None, [], [], [], [])
    with pytest.raises(ValueError, match="adapter 0 shapes"):
        lora_linear(randn(2, K), w, None, [(randn(2, K), randn(4, K + 1), randn(N, 4), 1.0)])


def test_opcheck():
    _, (packed, scales, aux, f, group) = _base("int4-g32")
    x, a, b = randn(3, K, dtype=torch.float32), randn(4, K), randn(N, 4)
    for impl in IMPLS:
        with impl_context(impl):
            torch.library.opcheck(torch.ops.slipstream.lora_linear.default,
                                  (x.requires_grad_(), packed, scales, aux, f, group, N, None, [x], [a], [b], [2.0]))
            torch.library.opcheck(torch.ops.slipstream.quant_linear.default,
                                  (x, packed, scales, aux, f, group, N, None))
