import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DTYPES, IMPLS, assert_close, f64, grads, impl_context, leaf, randn

from slipstream.kernels import geglu, swiglu
from slipstream.kernels.triton_utils import as_rows

torch.set_num_threads(1)

# name -> approximate (None: swiglu)
ACTS = {"swiglu": None, "geglu_erf": "none", "geglu_tanh": "tanh"}


def _op(act: str):
    approximate = ACTS[act]
    return swiglu if approximate is None else (lambda g, u: geglu(g, u, approximate))


def _f64_reference(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    approximate = ACTS[act]
    a = F.silu(gate) if approximate is None else F.gelu(gate, approximate=approximate)
    return a * up


def _check(gate, up, act, impl):
    """Forward and backward of the gated op against the float64 math."""
    dtype = gate.dtype
    gate, up = leaf(gate), leaf(up)
    with impl_context(impl):
        out = _op(act)(gate, up)
        go = randn(*out.shape, dtype=dtype)
        dgate, dup = grads(out, [gate, up], go)
    g64, u64 = f64(gate), f64(up)
    ref = _f64_reference(g64, u64, act)
    dgate64, dup64 = grads(ref, [g64, u64], go.double())
    assert out.dtype == dtype and out.shape == gate.shape and out.is_contiguous()
    assert dgate.dtype == dtype and dup.dtype == dtype
    assert_close(out, ref, dtype)
    assert_close(dgate, dgate64, dtype)
    assert_close(dup, dup64, dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(1, 97), (2, 3, 97)], ids=["one_row", "3d"])
def test_gated(impl, dtype, act, shape):
    _check(randn(*shape, dtype=dtype, scale=2.0), randn(*shape, dtype=dtype), act, impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_gated_1000_rows(dtype, act):
    _check(randn(1000, 97, dtype=dtype, scale=2.0), randn(1000, 97, dtype=dtype), act, "triton")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
def test_phi3_chunked_views(impl, act):
    """Phi-3's `gate, up = x.chunk(2, -1)`: row stride 2*I, read in place (no copy) by the kernels."""
    gate, up = randn(2, 5, 2 * 97, dtype=torch.bfloat16, scale=2.0).chunk(2, -1)
    assert as_rows(gate).data_ptr() == gate.data_ptr() and as_rows(up).data_ptr() == up.data_ptr()
    _check(gate, up, act, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_transposed_inputs(impl):
    gate, up = randn(97, 6, scale=2.0).t(), randn(6, 97)
    _check(gate, up, "swiglu", impl)


def test_rejects_mismatched_inputs():
    g = randn(3, 8)
    with pytest.raises(ValueError, match="must match"):
        swiglu(g, randn(3, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="must match"):
        swiglu(g, randn(3, 9))
    with pytest.raises(ValueError, match="approximate"):
        geglu(g, randn(3, 8), "sigmoid")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_matches_hf(dtype):
    """The CPU path computes what HF eager computes (LlamaMLP / Gemma / Phi-3 products), forward and backward:
    bit-equal in every dtype."""
    from transformers.activations import ACT2FN

    gate, up = randn(3, 5, 97, dtype=dtype, scale=2.0), randn(3, 5, 97, dtype=dtype)
    go = randn(3, 5, 97, dtype=dtype)
    pairs = [
        (swiglu, lambda g, u: ACT2FN["silu"](g) * u),
        (lambda g, u: geglu(g, u, "tanh"), lambda g, u: ACT2FN["gelu_pytorch_tanh"](g) * u),
        (lambda g, u: geglu(g, u, "none"), lambda g, u: u * ACT2FN["gelu"](g)),
    ]
    for ours, theirs in pairs:
        results = []
        for fn in (ours, theirs):
            g, u = leaf(gate), leaf(up)
            out = fn(g, u)
            results.append((out, *grads(out, [g, u], go)))
        for a, b in zip(*results):
            assert torch.equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
def test_opcheck(impl, act):
    approximate = ACTS[act]
    gate, up = leaf(randn(3, 33, scale=2.0)), leaf(randn(3, 33))
    grad = randn(3, 33)
    extra = () if approximate is None else (approximate,)
    fwd = torch.ops.slipstream.swiglu if approximate is None else torch.ops.slipstream.geglu
    bwd = torch.ops.slipstream.swiglu_backward if approximate is None else torch.ops.slipstream.geglu_backward
    with impl_context(impl):
        torch.library.opcheck(fwd.default, (gate, up, *extra))
        torch.library.opcheck(bwd.default, (grad, gate.detach(), up.detach(), *extra))


def test_compile_and_export():
    gate, up = randn(2, 4, 32), randn(2, 4, 32)

    class MLP(torch.nn.Module):
        def forward(self, gate, up):
            return swiglu(gate, up) + geglu(gate, up, "tanh")

    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    expected = MLP()(gate, up)
    torch.testing.assert_close(torch.compile(MLP(), backend=backend, fullgraph=True)(gate, up), expected)
    targets = {n.target for n in seen[0].graph.nodes}
    assert {torch.ops.slipstream.swiglu.default, torch.ops.slipstream.geglu.default} <= targets
    exported = torch.export.export(MLP(), (gate, up))
    torch.testing.assert_close(exported.module()(gate, up), expected)
    g, u = leaf(gate), leaf(up)
    out = torch.compile(MLP(), backend="aot_eager", fullgraph=True)(g, u)
    expected_grads = grads(MLP()(g, u), [g, u], torch.ones_like(out))
    torch.testing.assert_close(grads(out, [g, u], torch.ones_like(out)), expected_grads)
