"""Attention dropout inside the fused op: the flash kernels (forward and both backward kernels) against a float64
oracle given the same keep decisions, the seeded reference path, and the statistics of the decisions."""
import pytest
import torch
from attention_testing import f64_oracle
from kernel_testing import DTYPES, assert_close, f64, grads, impl_context, leaf, randn

from slipstream.kernels import attention
from slipstream.kernels.attention import _reference_keep
from slipstream.kernels.triton_attention import dropout_keep_mask

torch.set_num_threads(1)

# (B, Hq, Hkv, S, T, D), options: causal GQA across several blocks, non-causal with padding and S != T, a
# window with soft-cap; odd lengths everywhere.
CASES = {
    "causal_gqa_70": ((1, 4, 2, 70, 70, 64), dict(causal=True)),
    "noncausal_padded_17x40": ((2, 2, 1, 17, 40, 64), dict(causal=False, pad=True)),
    "window_softcap_d80": ((1, 2, 1, 45, 45, 80), dict(causal=True, window=20, softcap=2.0)),
}
P = 0.3


def _case(name, dtype):
    (b, hq, hkv, s, t, d), opts = CASES[name]
    opts = dict(opts)
    kp = None
    if opts.pop("pad", False):
        kp = torch.ones(b, t, dtype=torch.bool)
        kp[0, :6] = False
    q, k, v = randn(b, hq, s, d, dtype=dtype), randn(b, hkv, t, d, dtype=dtype), randn(b, hkv, t, d, dtype=dtype)
    return q, k, v, kp, opts


def _oracle(q, k, v, kp, opts, keep):
    d = q.shape[-1]
    return f64_oracle(q, k, v, kp, opts["causal"], d**-0.5, opts.get("window", -1), opts.get("softcap", 0.0),
                      keep=keep, dropout_p=P)


def _assert_matches_oracle(out, got, go, q, k, v, kp, opts, keep, dtype):
    """out and its grads `got` (for grad_out go) against the float64 oracle given the same keep decisions."""
    q64, k64, v64 = f64(q), f64(k), f64(v)
    ref = _oracle(q64, k64, v64, kp, opts, keep)
    assert_close(out, ref, dtype)
    for g, r in zip(got, grads(ref, [q64, k64, v64], go.double())):
        assert_close(g, r, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_flash_dropout_forward_backward(name, dtype):
    """The Triton kernels (interpreted) draw their keep decisions from Philox: the oracle gets the same ones
    from dropout_keep_mask and must agree on the output and on dq, dk, dv."""
    q, k, v, kp, opts = _case(name, dtype)
    q, k, v = leaf(q), leaf(k), leaf(v)
    with impl_context("triton"):
        out = attention(q, k, v, kp, scale=q.shape[-1] ** -0.5, dropout_p=P, seed=1234, **opts)
        go = randn(*out.shape, dtype=dtype)
        got = grads(out, [q, k, v], go)
        keep = dropout_keep_mask(q.shape[0], q.shape[1], q.shape[2], k.shape[2], P, 1234, q.device)
    _assert_matches_oracle(out, got, go, q, k, v, kp, opts, keep, dtype)


def test_dropout_changes_the_output_and_the_seed_reproduces_it():
    q, k, v, kp, opts = _case("causal_gqa_70", torch.float32)
    with impl_context("triton"):
        plain = attention(q, k, v, kp, **opts)
        a = attention(q, k, v, kp, dropout_p=P, seed=5, **opts)
        b = attention(q, k, v, kp, dropout_p=P, seed=5, **opts)
        c = attention(q, k, v, kp, dropout_p=P, seed=6, **opts)
        torch.manual_seed(0)
        d = attention(q, k, v, kp, dropout_p=P, **opts)
        torch.manual_seed(0)
        e = attention(q, k, v, kp, dropout_p=P, **opts)
    assert torch.equal(a, b) and torch.equal(d, e)
    assert not torch.allclose(a, plain, atol=1e-3) and not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("source", ["philox", "reference"])
def test_keep_fraction_and_independence(source):
    """About 1 - p of the decisions keep (binomial, 5 sigma), and heads / rows / columns are not copies."""
    b, h, s, t = 2, 4, 64, 96
    if source == "philox":
        with impl_context("triton"):
            keep = dropout_keep_mask(b, h, s, t, P, 99, torch.device("cpu"))
    else:
        keep = _reference_keep(torch.empty(b, h, s, 8), t, P, 99)
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - P)) < 5 * (P * (1 - P) / n) ** 0.5
    assert not torch.equal(keep[:, 0], keep[:, 1]) and not torch.equal(keep[0], keep[1])
    assert not torch.equal(keep[..., 0, :], keep[..., 1, :]) and not torch.equal(keep[..., 0], keep[..., 1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_path_dropout_backward(dtype):
    """Without Triton the op's reference draws its decisions from a seeded torch.Generator, in the forward and
    again in the backward: its gradients equal autograd through the oracle with those decisions."""
    q, k, v, kp, opts = _case("noncausal_padded_17x40", dtype)
    q, k, v = leaf(q), leaf(k), leaf(v)
    out = attention(q, k, v, kp, scale=q.shape[-1] ** -0.5, dropout_p=P, seed=77, **opts)
    go = randn(*out.shape, dtype=dtype)
    got = grads(out, [q, k, v], go)
    _assert_matches_oracle(out, got, go, q, k, v, kp, opts, _reference_keep(q, k.shape[2], P, 77), dtype)


def test_dropout_p_out_of_range():
    q = randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        attention(q, q, q, dropout_p=1.0)
