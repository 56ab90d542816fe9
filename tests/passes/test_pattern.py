"""The matcher and canonical op views: one pattern fits dynamo graphs and torch.export (ATen) graphs alike."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from slipstream.passes.fuse_rms_norm import FuseRmsNorm
from slipstream.passes.fuse_swiglu import FuseSwiglu
from slipstream.passes.ops import view
from slipstream.passes.pattern import Lit, Op, Var, match, near_miss

from test_fuse_rms_norm import GemmaStyleNorm, LlamaStyleNorm


def _graph(fn, n_inputs: int) -> fx.Graph:
    g = fx.Graph()
    xs = [g.placeholder(f"x{i}") for i in range(n_inputs)]
    g.output(fn(g, *xs))
    return g


def test_views_agree_across_spellings():
    g = fx.Graph()
    x = g.placeholder("x")
    spellings = [g.call_method("pow", (x, 2)), g.call_function(torch.pow, (x, 2)),
                 g.call_function(operator.pow, (x, 2)), g.call_function(torch.ops.aten.pow.Tensor_Scalar, (x, 2))]
    assert {view(n).name for n in spellings} == {"pow"}
    assert {view(n).params["exponent"] for n in spellings} == {2}
    assert view(g.call_function(operator.mul, (x, 3.0))).inputs == (x, 3.0)
    assert view(g.call_function(torch.add, (x, x), {"alpha": 2})) is None  # not a plain add


def test_commutative_and_literal_capture():
    g = fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    root = g.call_function(operator.mul, (g.call_function(operator.add, (0.5, x)), w))
    m = match(Op("mul", Var("w"), Op("add", Var("x"), Lit("c"))), root)
    assert m is not None and m["w"] is w and m["x"] is x and m["c"] == 0.5
    assert match(Op("mul", Var("a"), Var("a")), root) is None  # one name binds one node


def test_a_name_binds_one_size_however_often_it_is_computed():
    """Dynamo does not merge two `x.size(-1) // 2` chains: a name bound to a size accepts another node computing
    the same size (GPT-NeoX's decode graph), but never a different size or a tensor."""
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(2, 8)

    def half(divisor):
        size = g.call_method("size", (x, -1))
        size.meta["val"] = 8
        out = g.call_function(operator.floordiv, (size, divisor))
        out.meta["val"] = 8 // divisor
        return out
    a, b, c = half(2), half(2), half(4)
    pattern = Op("add", Var("n"), Var("n"))
    assert match(pattern, g.call_function(operator.add, (a, b)))["n"] is a
    assert match(pattern, g.call_function(operator.add, (a, c))) is None
    assert match(pattern, g.call_function(operator.add, (a, x))) is None


def _export_graph(module: nn.Module, *inputs) -> fx.GraphModule:
    return torch.export.export(module, inputs).graph_module


def test_rms_norm_pass_fits_export_graphs():
    for module, rule in ((LlamaStyleNorm(32), "weight-times-cast"), (GemmaStyleNorm(32), "cast-of-offset-weighted")):
        gm = _export_graph(module.to(torch.bfloat16), torch.randn(2, 3, 32, dtype=torch.bfloat16))
        stats = FuseRmsNorm().run(gm.graph)
        assert [r for r, _ in stats.matches] == [rule], gm.code
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert torch.ops.slipstream.rms_norm.default in targets
        assert torch.ops.aten.rsqrt.default not in targets


def test_swiglu_pass_fits_export_graphs():
    class MLP(nn.Module):
        def forward(self, g, u):
            return torch.nn.functional.silu(g) * u
    gm = _export_graph(MLP(), torch.randn(3, 8), torch.randn(3, 8))
    stats = FuseSwiglu().run(gm.graph)
    assert stats.matches == [("silu-times-up", "")]
    gm.recompile()
    g, u = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(gm(g, u)[0], torch.nn.functional.silu(g) * u)


def test_near_miss_reports_the_furthest_failure():
    """Why a pattern does not fit: what it wanted where, after how many op nodes; alternatives tried in order."""
    g = fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    relu = g.call_function(torch.relu, (x,))
    root = g.call_function(operator.mul, (g.call_function(operator.add, (relu, 1.0)), w))
    pattern = Op("mul", Op("add", Op("neg", Var("x")) | Op("tanh", Var("x")), Lit("c")), Var("w"))
    miss = near_miss(pattern, root)
    # mul and add entered (2), then no alternative fits relu: the last (the fallback), in the input order written
    assert (miss.progress, miss.expected, miss.found, miss.node) == (2, "'tanh'", "call_function 'relu'", relu)
    assert not miss.commuted
    assert near_miss(Op("mul", Op("add", Var("r"), Lit("c")), Var("w")), root) is None  # fits: no miss
    wrong_exponent = near_miss(Op("pow", Var("x"), exponent=2), g.call_method("pow", (x, 3)))
    assert wrong_exponent.expected == "'pow' with exponent=2"
    assert wrong_exponent.found == "'pow' node 'pow_1' with exponent=3"
    twice = near_miss(Op("mul", Var("a"), Var("a")), root)
    assert twice.expected.startswith("the node 'a' is bound to") and twice.progress == 1
