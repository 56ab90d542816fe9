import pytest
import torch
import torch.nn.functional as F
from attention_testing import f64_oracle, visible
from kernel_testing import DTYPES, IMPLS, assert_close, f64, grads, impl_context, leaf, randn

from slipstream.kernels import attention, select_attention_kernel
from slipstream.kernels.attention import attention_forward_op, attention_reference

torch.set_num_threads(1)

# (B, Hq, Hkv, S, T, D) and options. Long sequences use few heads: the interpreter is slow.
CASES = {
    "causal_17": ((2, 2, 2, 17, 17, 64), dict(causal=True)),
    "gqa2_noncausal_17": ((1, 4, 2, 17, 17, 64), dict(causal=False)),
    "gqa4_128_d80": ((1, 8, 2, 128, 128, 80), dict(causal=True)),
    "gqa8_17": ((1, 16, 2, 17, 17, 64), dict(causal=True)),
    "mqa_d128": ((1, 4, 1, 33, 33, 128), dict(causal=True)),
    "gqa2_d256": ((1, 2, 1, 20, 20, 256), dict(causal=True)),
    "seq_1": ((2, 2, 1, 1, 1, 64), dict(causal=True)),
    "decode_s1": ((2, 4, 2, 1, 300, 64), dict(causal=True)),
    "decode_window_softcap": ((1, 4, 1, 3, 200, 64), dict(causal=True, window=64, softcap=2.0)),
    "chunked_prefill": ((1, 2, 1, 40, 130, 64), dict(causal=True)),
    "window_300": ((1, 2, 1, 300, 300, 64), dict(causal=True, window=100)),
    "softcap_gqa": ((1, 4, 2, 33, 33, 64), dict(causal=True, softcap=2.0)),
    "window_noncausal_padded": ((2, 2, 1, 17, 40, 64), dict(causal=False, window=10, pad="left")),
    "left_padding": ((2, 2, 1, 20, 20, 64), dict(causal=True, pad="left")),
    "all_padded_noncausal": ((2, 2, 2, 17, 17, 80), dict(causal=False, pad="all")),
}


def _key_padding(b: int, t: int, how: str) -> torch.Tensor:
    keep = torch.ones(b, t, dtype=torch.bool)
    if how == "left":  # HF left padding: with causal, the first 5 query rows of batch 0 see no key at all
        keep[0, :5] = False
        keep[1:, 3:7] = False  # and a hole in the others
    elif how == "all":  # batch 1 fully padded: every row of it is empty
        keep[0, ::3] = False
        keep[1] = False
    return keep


def _inputs(b, hq, hkv, s, t, d, dtype):
    return randn(b, hq, s, d, dtype=dtype), randn(b, hkv, t, d, dtype=dtype), randn(b, hkv, t, d, dtype=dtype)


def _check(case: str, impl: str, dtype: torch.dtype) -> None:
    (b, hq, hkv, s, t, d), opts = CASES[case]
    opts = dict(opts)
    kp = _key_padding(b, t, opts.pop("pad")) if "pad" in opts else None
    q, k, v = (leaf(x) for x in _inputs(b, hq, hkv, s, t, d, dtype))
    with impl_context(impl):
        out = attention(q, k, v, kp, scale=d**-0.5, **opts)
        go = randn(*out.shape, dtype=dtype)
        dq, dk, dv = grads(out, [q, k, v], go)
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    q64, k64, v64 = f64(q), f64(k), f64(v)
    ref = f64_oracle(q64, k64, v64, kp, scale=d**-0.5, **opts)
    expected = grads(ref, [q64, k64, v64], go.double())
    assert_close(out, ref, dtype)
    for actual, exp in zip((dq, dk, dv), expected):
        assert actual.dtype == dtype
        assert_close(actual, exp, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_attention(case, dtype, impl):
    _check(case, impl, dtype)


@pytest.mark.parametrize("case", ["mqa_d128", "gqa4_128_d80"])
def test_long_sequence_tiles(case, monkeypatch):
    """The cases above are all short (SHORT_SEQ's tiles for 16-bit D = 128): run the long-sequence tiles too."""
    from slipstream.kernels import triton_attention, triton_attention_bwd
    short = triton_attention._fwd_config(128, torch.bfloat16, 33), triton_attention_bwd._bwd_config(
        128, torch.bfloat16, 33)
    for module in (triton_attention, triton_attention_bwd):
        monkeypatch.setattr(module, "SHORT_SEQ", 0)
    long = triton_attention._fwd_config(128, torch.bfloat16, 33), triton_attention_bwd._bwd_config(
        128, torch.bfloat16, 33)
    assert long == (triton_attention._fwd_config(128, torch.bfloat16, 4096),
                    triton_attention_bwd._bwd_config(128, torch.bfloat16, 4096))
    assert long[0] != short[0] and long[1][1] != short[1][1]
    _check(case, "triton", torch.bfloat16)


def test_cases_take_the_intended_kernel():
    """The case table covers both Triton kernels (decode for few queries over many keys, flash otherwise)."""
    meta = {name: _inputs(b, hq, hkv, s, t, d, torch.bfloat16) for name, ((b, hq, hkv, s, t, d), _) in CASES.items()}
    kinds = {name: select_attention_kernel(q, k, triton=True) for name, (q, k, _) in meta.items()}
    assert {n for n, kind in kinds.items() if kind == "decode"} == {"decode_s1", "decode_window_softcap"}
    assert all(kind in ("flash", "decode") for kind in kinds.values())


def _meta(*shape, dtype=torch.bfloat16, device="meta"):
    return torch.empty(*shape, dtype=dtype, device=device)


@pytest.mark.parametrize("q_shape, k_shape, dtype, triton, expected", [
    ((1, 32, 1, 128), (1, 8, 4096, 128), torch.bfloat16, True, "decode"),
    ((4, 32, 16, 128), (4, 4, 4096, 128), torch.float16, True, "flash"),  # 8 heads x 16 queries > 64 rows
    ((1, 8, 512, 64), (1, 8, 512, 64), torch.bfloat16, True, "flash"),
    ((1, 8, 1, 64), (1, 8, 100, 64), torch.bfloat16, True, "flash"),  # too few keys to split
    ((1, 8, 1, 64), (1, 8, 4096, 64), torch.float64, True, "reference"),
    ((1, 8, 16, 512), (1, 8, 16, 512), torch.bfloat16, True, "reference"),  # head_dim > 256
    ((1, 8, 16, 64), (1, 8, 16, 64), torch.bfloat16, False, "reference"),
])
def test_select_attention_kernel(q_shape, k_shape, dtype, triton, expected):
    assert select_attention_kernel(_meta(*q_shape, dtype=dtype), _meta(*k_shape, dtype=dtype), triton) == expected


def test_select_attention_kernel_follows_dispatch():
    q, k = _meta(1, 2, 1, 64, device="cpu"), _meta(1, 2, 300, 64, device="cpu")
    assert select_attention_kernel(q, k) == "reference"
    with impl_context("triton"):
        assert select_attention_kernel(q, k) == "decode"


@pytest.mark.parametrize("splits", [1, 3, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_kernel_vs_reference(splits, dtype):
    """Split-K decode (forced split counts; GQA 8 x 2 queries, padding, window, soft-cap) vs the reference."""
    from slipstream.kernels.triton_attention import decode_forward

    q, k, v = _inputs(2, 8, 1, 2, 150, 64, dtype)
    kp = _key_padding(2, 150, "left")
    args = (q, k, v, kp, True, 0.125, 100, 3.0)
    out, lse = decode_forward(*args, num_splits=splits)
    ref_out, ref_lse = attention_reference(*(x.double() for x in (q, k, v)), *args[3:])
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32)


def test_decode_kernel_empty_rows():
    """Rows with no visible key in any split: out 0, lse +inf, like the flash kernel."""
    from slipstream.kernels.triton_attention import decode_forward, flash_forward

    q, k, v = _inputs(2, 2, 1, 1, 130, 64, torch.float32)
    kp = _key_padding(2, 130, "all")
    out, lse = decode_forward(q, k, v, kp, True, 0.125, -1, 0.0, num_splits=3)
    flash_out, flash_lse = flash_forward(q, k, v, kp, True, 0.125, -1, 0.0)
    assert (out[1] == 0).all() and torch.isinf(lse[1]).all() and (lse[1] > 0).all()
    assert_close(out, flash_out, torch.float32)
    torch.testing.assert_close(lse, flash_lse)


@pytest.mark.parametrize("case", ["gqa_window", "chunked_padding", "mqa_noncausal"])
def test_reference_matches_sdpa(case):
    """The CPU reference path equals SDPA given the equivalent bool mask and repeat_kv'd k/v (fp32)."""
    shape, causal, window, pad = {
        "gqa_window": ((2, 4, 2, 24, 24, 64), True, 8, None),
        "chunked_padding": ((2, 2, 2, 6, 30, 32), True, -1, "left"),
        "mqa_noncausal": ((1, 4, 1, 9, 13, 80), False, -1, None),
    }[case]
    b, hq, hkv, s, t, d = shape
    q, k, v = _inputs(*shape, torch.float32)
    kp = _key_padding(b, t, pad) if pad else None
    out = attention(q, k, v, kp, causal, 0.3, window)
    mask = visible(b, s, t, kp, causal, window)
    assert mask.any(-1).all(), "SDPA returns NaN for empty rows: the cases avoid them"
    k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3), torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_inputs(impl):
    """HF layout views ([B, S, H, D].transpose(1, 2)) are read in place; a strided last dim is copied."""
    q = leaf(randn(2, 19, 4, 64).transpose(1, 2))
    k = leaf(randn(2, 2, 64, 19).transpose(2, 3))  # last dim strided
    v = leaf(randn(2, 19, 2, 64).transpose(1, 2))
    with impl_context(impl):
        out = attention(q, k, v, None, True, 0.125)
        got = grads(out, [q, k, v], torch.ones_like(out))
    q64, k64, v64 = f64(q), f64(k), f64(v)
    ref = f64_oracle(q64, k64, v64, None, True, 0.125)
    assert out.is_contiguous()
    assert_close(out, ref, torch.float32)
    for a, e in zip(got, grads(ref, [q64, k64, v64], torch.ones_like(ref))):
        assert_close(a, e, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_out_only_op_autograd(impl):
    """slipstream::attention called directly with grads recomputes lse (and redraws the dropout decisions from the
    seed) in backward; same grads as the wrapper."""
    q, k, v = (leaf(x) for x in _inputs(1, 4, 2, 9, 9, 64, torch.float32))
    kp = _key_padding(1, 9, "left")
    with impl_context(impl):
        out = torch.ops.slipstream.attention(q, k, v, kp, True, 0.125, -1, 1.5, 0.2, 9)
        got = grads(out, [q, k, v], torch.ones_like(out))
        out2 = attention(q, k, v, kp, True, 0.125, softcap=1.5, dropout_p=0.2, seed=9)
        expected = grads(out2, [q, k, v], torch.ones_like(out2))
    assert_close(out, out2, torch.float32)
    for a, e in zip(got, expected):
        assert_close(a, e, torch.float32)


def _opcheck_args(pad: bool):
    q, k, v = (leaf(x) for x in _inputs(1, 4, 2, 5, 7, 16, torch.float32))
    kp = _key_padding(1, 7, "left") if pad else None
    return q, k, v, kp


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pad", [False, True])
def test_opcheck(impl, pad):
    q, k, v, kp = _opcheck_args(pad)
    options = (True, 0.25, 4, 2.0, 0.25, 7) if pad else (False, 0.25, -1, 0.0, 0.0, 0)  # dropout is seeded: pure
    with impl_context(impl):
        torch.library.opcheck(torch.ops.slipstream.attention.default, (q, k, v, kp, *options))
        torch.library.opcheck(torch.ops.slipstream.attention_forward.default, (q, k, v, kp, *options))
        out, lse = attention_forward_op(q.detach(), k.detach(), v.detach(), kp, *options)
        args = (randn(*out.shape), q.detach(), k.detach(), v.detach(), out, lse, kp, *options)
        torch.library.opcheck(torch.ops.slipstream.attention_backward.default, args)


def test_compile_and_export():
    q, k, v = _inputs(1, 4, 2, 8, 8, 32, torch.float32)
    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return attention(q, k, v, None, True, 0.2, softcap=3.0) * 2

    expected = Attn()(q, k, v)
    torch.testing.assert_close(torch.compile(Attn(), backend=backend, fullgraph=True)(q, k, v), expected)
    assert any(n.target is torch.ops.slipstream.attention.default for n in seen[0].graph.nodes)
    exported = torch.export.export(Attn(), (q, k, v))
    assert "slipstream.attention" in str(exported.graph)
    torch.testing.assert_close(exported.module()(q, k, v), expected)
    qg, kg, vg = leaf(q), leaf(k), leaf(v)
    out = torch.compile(Attn(), backend="aot_eager", fullgraph=True)(qg, kg, vg)
    expected_grads = grads(Attn()(qg, kg, vg), [qg, kg, vg], torch.ones_like(out))
    torch.testing.assert_close(grads(out, [qg, kg, vg], torch.ones_like(out)), expected_grads)


def test_no_grad_calls_skip_the_dispatcher():
    # Nothing to record for autograd (every decode step): the wrapper runs what the op's kernel would run.
    q, k, v = randn(1, 4, 5, 16), randn(1, 2, 5, 16), randn(1, 2, 5, 16)

    def ops_seen(fn):
        with torch.profiler.profile() as prof:
            out = fn()
        return out, {e.name for e in prof.events() if e.name.startswith("slipstream::")}

    with torch.no_grad():
        direct, seen = ops_seen(lambda: attention(q, k, v))
        assert not seen
        expected, seen = ops_seen(lambda: torch.ops.slipstream.attention(q, k, v, None, True, 0.25, -1, 0.0, 0.0, 0))
        assert seen == {"slipstream::attention"}
    assert torch.equal(direct, expected)
    # A gradient wanted, eagerly: the op's own formula as an autograd.Function, still without the dispatcher; the
    # gradients are the op's.
    grads = []
    for fn in (lambda a, b, c: attention(a, b, c),
               lambda a, b, c: torch.ops.slipstream.attention_forward(a, b, c, None, True, 0.25, -1, 0.0, 0.0, 0)[0]):
        leaves = [leaf(t) for t in (q, k, v)]
        out, seen = ops_seen(lambda: fn(*leaves))
        out.backward(torch.ones_like(out))
        grads.append((seen, out.grad_fn.name(), [t.grad for t in leaves]))
    (twin_seen, twin_node, twin_grads), (_, _, op_grads) = grads
    assert not twin_seen and twin_node == "attention_forward_grad_twinBackward"
    assert all(torch.equal(a, b) for a, b in zip(twin_grads, op_grads))
