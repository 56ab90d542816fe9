import pytest
import torch
from kernel_testing import DTYPES, IMPLS, assert_close, f64, grads, impl_context, leaf, randn

from slipstream.kernels import rms_norm
from slipstream.kernels.rms_norm import rms_norm_backward_op

torch.set_num_threads(1)

EPS = 1e-6
# (cast_first, offset): Llama, Gemma, and the two crossings.
VARIANTS = {"llama": (True, 0.0), "gemma": (False, 1.0), "cast_first_offset": (True, 1.0), "fp32_mul": (False, 0.0)}


def _f64_reference(x: torch.Tensor, w: torch.Tensor, offset: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * (w + offset)


def _weight(n: int, offset: float, dtype: torch.dtype) -> torch.Tensor:
    # Like trained weights: near 1 for Llama, near 0 for Gemma's (1 + w); never zero.
    return randn(n, dtype=dtype, scale=0.2, shift=1.0 - offset)


def _check(x, w, cast_first, offset, impl, tol_dtype):
    """Forward and backward of slipstream::rms_norm against the float64 math."""
    x, w = leaf(x), leaf(w)
    with impl_context(impl):
        out = rms_norm(x, w, EPS, offset, cast_first)
        go = randn(*out.shape, dtype=out.dtype)
        gx, gw = grads(out, [x, w], go)
    x64, w64 = f64(x), f64(w)
    ref = _f64_reference(x64, w64, offset)
    gx64, gw64 = grads(ref, [x64, w64], go.double())
    expected_dtype = torch.promote_types(x.dtype, w.dtype) if cast_first else x.dtype
    assert out.dtype == expected_dtype and out.shape == x.shape and out.is_contiguous()
    assert gx.dtype == x.dtype and gw.dtype == w.dtype
    assert_close(out, ref, tol_dtype)
    assert_close(gx, gx64, tol_dtype)
    assert_close(gw, gw64, tol_dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 97), (2, 3, 97)], ids=["one_row", "3d"])
def test_rms_norm(impl, dtype, variant, shape):
    cast_first, offset = VARIANTS[variant]
    _check(randn(*shape, dtype=dtype), _weight(shape[-1], offset, dtype), cast_first, offset, impl, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", ["llama", "gemma"])
def test_rms_norm_1000_rows(dtype, variant):
    cast_first, offset = VARIANTS[variant]
    _check(randn(1000, 97, dtype=dtype), _weight(97, offset, dtype), cast_first, offset, "triton", dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["row_strided", "transposed"])
def test_rms_norm_non_contiguous(impl, layout):
    if layout == "row_strided":  # unit last-dim stride, row stride 128: read in place
        x = randn(6, 128, dtype=torch.bfloat16)[:, :97]
    else:  # last dim strided: the wrapper makes rows contiguous
        x = randn(97, 6, dtype=torch.bfloat16).t()
    _check(x, _weight(97, 0.0, torch.bfloat16), True, 0.0, impl, torch.bfloat16)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", ["llama", "gemma"])
def test_rms_norm_mixed_dtypes(impl, variant):
    """bf16 activations with an fp32 weight: Llama-style promotes to fp32, Gemma-style returns bf16."""
    cast_first, offset = VARIANTS[variant]
    x = randn(5, 97, dtype=torch.bfloat16)
    _check(x, _weight(97, offset, torch.float32), cast_first, offset, impl, torch.bfloat16)


@pytest.mark.parametrize("impl", IMPLS)
def test_rms_norm_frozen_weight(impl):
    x, w = leaf(randn(4, 97)), _weight(97, 0.0, torch.float32)
    with impl_context(impl):
        out = rms_norm(x, w, EPS)
        (gx,) = grads(out, [x], torch.ones_like(out))
        gx_full, gw_empty = rms_norm_backward_op(torch.ones_like(out), x.detach(), w, EPS, 0.0, True, False)
    assert gw_empty.numel() == 0
    assert_close(gx_full, gx, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_matches_hf(dtype):
    """The CPU path computes what HF eager computes, rounding for rounding: bit-equal in every dtype."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = randn(3, 5, 97, dtype=dtype)
    llama, gemma = LlamaRMSNorm(97, eps=EPS).to(dtype), Gemma3RMSNorm(97, eps=EPS).to(dtype)
    with torch.no_grad():
        llama.weight.copy_(_weight(97, 0.0, dtype))
        gemma.weight.copy_(_weight(97, 1.0, dtype))
        ours = rms_norm(x, llama.weight, EPS, 0.0, True), rms_norm(x, gemma.weight, EPS, 1.0, False)
        theirs = llama(x), gemma(x)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", ["llama", "gemma"])
def test_opcheck(impl, variant):
    cast_first, offset = VARIANTS[variant]
    x, w = leaf(randn(3, 33)), leaf(_weight(33, offset, torch.float32))
    with impl_context(impl):
        torch.library.opcheck(torch.ops.slipstream.rms_norm.default, (x, w, EPS, offset, cast_first))
        grad = randn(3, 33)
        for need_w in (True, False):
            args = (grad, x.detach(), w.detach(), EPS, offset, cast_first, need_w)
            torch.library.opcheck(torch.ops.slipstream.rms_norm_backward.default, args)


def test_compile_and_export():
    x, w = randn(2, 4, 32), _weight(32, 0.0, torch.float32)

    class Norm(torch.nn.Module):
        def forward(self, x, w):
            return rms_norm(x, w, EPS, 0.0, True) * 2

    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    expected = Norm()(x, w)
    torch.testing.assert_close(torch.compile(Norm(), backend=backend, fullgraph=True)(x, w), expected)
    assert any(n.target is torch.ops.slipstream.rms_norm.default for n in seen[0].graph.nodes)
    exported = torch.export.export(Norm(), (x, w))
    assert "slipstream.rms_norm" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x, w), expected)
    xg, wg = leaf(x), leaf(w)
    out = torch.compile(Norm(), backend="aot_eager", fullgraph=True)(xg, wg)
    expected_grads = grads(Norm()(xg, wg), [xg, wg], torch.ones_like(out))
    torch.testing.assert_close(grads(out, [xg, wg], torch.ones_like(out)), expected_grads)


def test_reference_matches_hf_fp16_and_mixed_weight():
    """fp16 input, and a bf16 input with an fp32 weight (HF then returns fp32): still bit-equal."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    for x_dtype, w_dtype in ((torch.float16, torch.float16), (torch.bfloat16, torch.float32)):
        x = randn(2, 3, 97, dtype=x_dtype)
        llama = LlamaRMSNorm(97, eps=EPS).to(w_dtype)
        with torch.no_grad():
            llama.weight.copy_(_weight(97, 0.0, w_dtype))
            ours, theirs = rms_norm(x, llama.weight, EPS, 0.0, True), llama(x)
        assert ours.dtype == theirs.dtype == w_dtype
        assert torch.equal(ours, theirs)
