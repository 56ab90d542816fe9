import pytest
import torch
from attention_testing import f64_oracle
from kernel_testing import DTYPES, IMPLS, assert_close, f64, grads, impl_context, leaf, randn

from slipstream.kernels import attention_varlen
from slipstream.kernels.attention_varlen import attention_varlen_forward_op

torch.set_num_threads(1)

# (per-sequence (S, T) lengths, Hq, Hkv, D) and options. S < T sequences are chunked prefill against a cache;
# a (0, 5) and a (3, 0) sequence check empty sequences and query rows with no key at all.
CASES = {
    "causal_mixed": (([(17, 17), (1, 1), (40, 40), (5, 5)], 4, 2, 64), dict(causal=True)),
    "noncausal_mqa_d80": (([(9, 9), (30, 30)], 4, 1, 80), dict(causal=False)),
    "chunked_window_softcap": (([(3, 20), (16, 70), (1, 9)], 2, 2, 64), dict(causal=True, window=12, softcap=2.0)),
    "empty_sequences_d128": (([(4, 6), (0, 5), (3, 0), (7, 7)], 2, 1, 128), dict(causal=True)),
}


def _cu(lengths) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)


def _check(case: str, impl: str, dtype: torch.dtype) -> None:
    (lengths, hq, hkv, d), opts = CASES[case]
    s_lens, t_lens = [s for s, _ in lengths], [t for _, t in lengths]
    cu_q, cu_k = _cu(s_lens), _cu(t_lens)
    q = leaf(randn(sum(s_lens), hq, d, dtype=dtype))
    k, v = (leaf(randn(sum(t_lens), hkv, d, dtype=dtype)) for _ in range(2))
    with impl_context(impl):
        out = attention_varlen(q, k, v, cu_q, cu_k, max(s_lens), max(t_lens), scale=d**-0.5, **opts)
        go = randn(*out.shape, dtype=dtype)
        got = grads(out, [q, k, v], go)
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    q64, k64, v64 = f64(q), f64(k), f64(v)
    pieces = []  # the f64 oracle per sequence, on [1, H, n, D] views of the packed tensors
    for b in range(len(lengths)):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        dense = [x[s].transpose(0, 1).unsqueeze(0) for x, s in ((q64, sq), (k64, sk), (v64, sk))]
        pieces.append(f64_oracle(*dense, None, scale=d**-0.5, **opts)[0].transpose(0, 1))
    ref = torch.cat(pieces)
    assert_close(out, ref, dtype)
    for actual, expected in zip(got, grads(ref, [q64, k64, v64], go.double())):
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_attention_varlen(case, dtype, impl):
    _check(case, impl, dtype)


@pytest.mark.parametrize("impl", IMPLS)
def test_varlen_matches_dense_op(impl):
    """Two equal-length sequences packed == the dense op on the [2, H, S, D] batch (incl. lse)."""
    from slipstream.kernels.attention import attention_forward_op

    q, k, v = randn(2, 4, 11, 64), randn(2, 2, 11, 64), randn(2, 2, 11, 64)
    cu = _cu([11, 11])
    packed = [x.transpose(1, 2).reshape(22, x.shape[1], 64) for x in (q, k, v)]
    with impl_context(impl):
        out, lse = attention_varlen_forward_op(*packed, cu, cu, 11, 11, True, 0.125, 5, 0.0)
        dense_out, dense_lse = attention_forward_op(q, k, v, None, True, 0.125, 5, 0.0, 0.0, 0)
    assert_close(out, dense_out.transpose(1, 2).reshape(22, 4, 64), torch.float32)
    assert_close(lse, dense_lse.transpose(0, 1).reshape(4, 22), torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_opcheck(impl):
    q = leaf(randn(9, 4, 16))
    k, v = leaf(randn(11, 2, 16)), leaf(randn(11, 2, 16))
    cu_q, cu_k = _cu([4, 0, 5]), _cu([6, 2, 3])
    options = (6, 6, True, 0.25, 3, 2.0)
    with impl_context(impl):
        torch.library.opcheck(torch.ops.slipstream.attention_varlen.default, (q, k, v, cu_q, cu_k, *options))
        torch.library.opcheck(torch.ops.slipstream.attention_varlen_forward.default, (q, k, v, cu_q, cu_k, *options))
        out, lse = attention_varlen_forward_op(q.detach(), k.detach(), v.detach(), cu_q, cu_k, *options)
        args = (randn(*out.shape), q.detach(), k.detach(), v.detach(), out, lse, cu_q, cu_k, *options)
        torch.library.opcheck(torch.ops.slipstream.attention_varlen_backward.default, args)


@pytest.mark.parametrize("impl", IMPLS)
def test_out_only_op_autograd(impl):
    q, k, v = leaf(randn(7, 2, 32)), leaf(randn(7, 1, 32)), leaf(randn(7, 1, 32))
    cu = _cu([3, 4])
    with impl_context(impl):
        out = torch.ops.slipstream.attention_varlen(q, k, v, cu, cu, 4, 4, True, 0.2, -1, 0.0)
        got = grads(out, [q, k, v], torch.ones_like(out))
        out2 = attention_varlen(q, k, v, cu, cu, 4, 4, True, 0.2)
        expected = grads(out2, [q, k, v], torch.ones_like(out2))
    assert_close(out, out2, torch.float32)
    for a, e in zip(got, expected):
        assert_close(a, e, torch.float32)


def test_no_grad_calls_skip_the_dispatcher():
    q, k, v = randn(9, 4, 16), randn(9, 2, 16), randn(9, 2, 16)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with torch.no_grad(), torch.profiler.profile() as prof:
        direct = attention_varlen(q, k, v, cu, cu, 5, 5)
    assert not [e for e in prof.events() if e.name.startswith("slipstream::")]
    with torch.no_grad():
        expected = torch.ops.slipstream.attention_varlen(q, k, v, cu, cu, 5, 5, True, 0.25, -1, 0.0)
    assert torch.equal(direct, expected)
