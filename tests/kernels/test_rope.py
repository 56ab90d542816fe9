import pytest
import torch
from kernel_testing import DTYPES, IMPLS, assert_close, f64, grads, impl_context, leaf, randn

from slipstream.kernels import rope
from slipstream.kernels.rope import rope_reference
from slipstream.kernels.triton_rope import rope_apply

torch.set_num_threads(1)

# name -> (head dim D, rotary dim R)
ROTARY = {"full": (64, 64), "partial": (64, 32), "odd": (96, 40)}


def _hf_rope(q, k, cos, sin):
    # Phi-3's apply_rotary_pos_emb: Llama's rotate-half formula plus partial-rotary pass-through.
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin)


def _hf_rope_interleaved(q, k, cos, sin):
    # GLM's rotation of neighbouring dims (GLM, Helium, Ernie 4.5 and Cohere write the same), applied as
    # GLM's apply_rotary_pos_emb does after it has interleaved its tables, with the partial-rotary pass-through.
    from transformers.models.glm.modeling_glm import rotate_half

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    return tuple(torch.cat([x[..., :r] * cos + rotate_half(x[..., :r]) * sin, x[..., r:]], -1) for x in (q, k))


def _inputs(b, hq, hk, s, d, r, cos_batch, dtype):
    """q as HF makes it (a transpose of [B, S, H, D]), k contiguous, random cos/sin (unequal halves)."""
    q = randn(b, s, hq, d, dtype=dtype).transpose(1, 2)
    k = randn(b, hk, s, d, dtype=dtype)
    return q, k, randn(cos_batch, s, r, dtype=dtype), randn(cos_batch, s, r, dtype=dtype)


def _check(q, k, cos, sin, impl, interleaved=False):
    """Forward and backward of slipstream::rope against the float64 math."""
    dtype = q.dtype
    q, k = leaf(q), leaf(k)
    with impl_context(impl):
        out_q, out_k = rope(q, k, cos, sin, interleaved)
        go = randn(*out_q.shape, dtype=dtype), randn(*out_k.shape, dtype=dtype)
        dq, dk = grads((out_q, out_k), [q, k], go)
    q64, k64 = f64(q), f64(k)
    ref_q, ref_k = (_hf_rope_interleaved if interleaved else _hf_rope)(q64, k64, cos.double(), sin.double())
    dq64, dk64 = grads((ref_q, ref_k), [q64, k64], (go[0].double(), go[1].double()))
    for out, ref, x in ((out_q, ref_q, q), (out_k, ref_k, k)):
        assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
        assert_close(out, ref, dtype)
    assert_close(dq, dq64, dtype)
    assert_close(dk, dk64, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rotary", ROTARY)
@pytest.mark.parametrize("cos_batch", ["cos_b1", "cos_bB"])
def test_rope(impl, dtype, rotary, cos_batch):
    d, r = ROTARY[rotary]
    b = 2
    _check(*_inputs(b, 4, 2, 5, d, r, 1 if cos_batch == "cos_b1" else b, dtype), impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rotary", ROTARY)
def test_rope_interleaved(impl, dtype, rotary):
    d, r = ROTARY[rotary]
    _check(*_inputs(2, 4, 2, 5, d, r, 2, dtype), impl, interleaved=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "interleaved"])
def test_rope_one_token(impl, interleaved):
    _check(*_inputs(1, 3, 1, 1, 64, 32, 1, torch.bfloat16), impl, interleaved)


def test_rope_many_heads():
    """More heads than one head block holds (the kernel loops over head blocks), non-power-of-2 head counts."""
    _check(*_inputs(1, 40, 8, 2, 128, 128, 1, torch.bfloat16), "triton")


def test_rope_1000_tokens():
    _check(*_inputs(1, 2, 1, 1000, 16, 16, 1, torch.float32), "triton")


def test_kernel_rounding_is_exact_in_fp16():
    """The kernel rounds where eager rounds: with fp16 (exactly rounded by the interpreter too) it is bit-equal
    to the reference, forward and backward."""
    q, k, cos, sin = _inputs(2, 4, 2, 5, 96, 40, 2, torch.float16)
    for backward in (False, True):
        for interleaved in (False, True):
            expected = rope_reference(q, k, cos, sin, backward, interleaved)
            with impl_context("triton"):
                actual = rope_apply(q, k, cos, sin, backward, interleaved)
            assert all(torch.equal(a, e) for a, e in zip(actual, expected))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rotary", ["full", "partial"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "interleaved"])
def test_reference_matches_hf(dtype, rotary, interleaved):
    """The CPU path is op-for-op HF eager, forward and backward: bit-equal in bf16."""
    d, r = ROTARY[rotary]
    q, k, cos, sin = _inputs(2, 4, 2, 5, d, r, 1, dtype)
    go = randn(2, 4, 5, d, dtype=dtype), randn(2, 2, 5, d, dtype=dtype)
    results = []
    ours = (lambda *a: rope(*a, True)) if interleaved else rope
    for fn in (ours, _hf_rope_interleaved if interleaved else _hf_rope):
        ql, kl = leaf(q), leaf(k)
        out = fn(ql, kl, cos, sin)
        results.append((*out, *grads(out, [ql, kl], go)))
    for ours, theirs in zip(*results):
        if dtype == torch.bfloat16:
            assert torch.equal(ours, theirs)
        assert_close(ours, theirs, dtype)


def test_rejects_bad_inputs():
    q, k, cos, sin = _inputs(2, 4, 2, 5, 64, 32, 1, torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        rope(q, k, cos.float(), sin.float())
    with pytest.raises(ValueError, match="even"):
        rope(q, k, cos[..., :31], sin[..., :31])
    with pytest.raises(ValueError, match="cos"):
        rope(q, k, cos[:, :4], sin[:, :4])


@pytest.mark.parametrize("impl", IMPLS)
def test_no_grad_for_cos_sin(impl):
    q, k, cos, sin = _inputs(1, 2, 1, 3, 16, 16, 1, torch.float32)
    q, cos = leaf(q), leaf(cos)
    with impl_context(impl):
        out_q, out_k = rope(q, k, cos, sin)
        with pytest.raises(RuntimeError, match="cos/sin"):
            (out_q.sum() + out_k.sum()).backward()


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck(impl):
    q, k, cos, sin = _inputs(2, 4, 2, 3, 16, 8, 2, torch.float32)
    q, k = leaf(q), leaf(k)
    with impl_context(impl):
        grad_q, grad_k = randn(2, 3, 4, 16).transpose(1, 2), randn(2, 2, 3, 16)
        for interleaved in (False, True):
            torch.library.opcheck(torch.ops.slipstream.rope.default, (q, k, cos, sin, interleaved))
            torch.library.opcheck(torch.ops.slipstream.rope_backward.default, (grad_q, grad_k, cos, sin, interleaved))


def test_compile_and_export():
    q, k, cos, sin = _inputs(2, 4, 2, 3, 16, 8, 1, torch.float32)

    class Rotary(torch.nn.Module):
        def forward(self, q, k, cos, sin):
            q, k = rope(q, k, cos, sin)
            return q.sum(1) + k.sum(1)

    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    expected = Rotary()(q, k, cos, sin)
    torch.testing.assert_close(torch.compile(Rotary(), backend=backend, fullgraph=True)(q, k, cos, sin), expected)
    assert any(n.target is torch.ops.slipstream.rope.default for n in seen[0].graph.nodes)
    exported = torch.export.export(Rotary(), (q, k, cos, sin))
    torch.testing.assert_close(exported.module()(q, k, cos, sin), expected)
    ql, kl = leaf(q), leaf(k)
    out = torch.compile(Rotary(), backend="aot_eager", fullgraph=True)(ql, kl, cos, sin)
    expected_grads = grads(Rotary()(ql, kl, cos, sin), [ql, kl], torch.ones_like(out))
    torch.testing.assert_close(grads(out, [ql, kl], torch.ones_like(out)), expected_grads)
