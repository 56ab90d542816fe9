"""fuse-lora-linear: peft's LoRA linear `base(x) + lora_B(lora_A(dropout(x))) * scaling` -> slipstream::lora_linear.

The base is a dense `linear(x, W, bias)` or a `slipstream::quant_linear` (a QuantLinear from quantize-weights);
each further adapter on the same layer extends the call (`lora_linear(...) + B(A(x')) * s`), so any number of
adapters ends as one op. The adapter's input x' (x itself, or peft's dropout / dtype cast of x) stays a node of
the graph: dropout keeps peft's RNG, and the op's backward returns the gradient for x' to it.

Refused, with the reason: an adapter whose input is not x (or a dropout/cast of it), LoRA with a bias on B
(`lora_bias=True`), and DoRA (its weight-norm rescaling needs the full weight).
"""
from __future__ import annotations

import torch
from torch.fx import Graph, Node

from .base import Pass, PassOptions, PassStats, Rule
from .checks import dtype_supported, first_reason
from .ops import tensor_meta, view
from .pattern import Lit, Match, Op, Var

X = Var("x")
_PRODUCT = Op("mul", Op("linear", Op("linear", Var("xi"), Var("a"), None), Var("b"), Var("b_bias")), Lit("scaling"))
# peft's bitsandbytes wrappers cast each adapter's output to the base's dtype before adding it
TERM = Op("cast", _PRODUCT, dtype=Var("term_dtype")) | _PRODUCT
DENSE_BASE = Op("linear", X, Var("w"), Var("bias"))
_QUANT = Op("quant_linear", X, Var("packed"), Var("scales"), Var("aux"), Var("bias"), fmt=Var("fmt"),
            group=Var("group"), out_features=Var("out_features"))
QUANT_BASE = Op("clone", _QUANT) | _QUANT  # peft's 4-bit wrapper clones the base output ("defensively")
_FUSED = Op("lora_linear", X, Var("base"), Var("scales"), Var("aux"), Var("bias"), fmt=Var("fmt"),
            group=Var("group"), out_features=Var("out_features"), xs=Var("xs"), a=Var("as"), b=Var("bs"),
            scalings=Var("scalings"))
FUSED_BASE = Op("cast", _FUSED, dtype=Var("fused_dtype")) | _FUSED  # an earlier round's cast (see _replace)
_PASS_THROUGH = ("dropout", "cast")


def _reaches_x(xi: object, x: Node) -> bool:
    """x' is x, or x under peft's dropout and dtype cast (in either order)."""
    for _ in range(3):
        if xi is x:
            return True
        v = view(xi)
        if v is None or v.name not in _PASS_THROUGH:
            return False
        xi = v.inputs[0]
    return xi is x


def _check(m: Match) -> str | None:
    if m["b_bias"] is not None:
        return "LoRA B has a bias (lora_bias=True), which slipstream::lora_linear does not take"
    if not _reaches_x(m["xi"], m["x"]):
        return "the adapter's input is not the base layer's input (or a dropout / cast of it)"
    x, a = tensor_meta(m["x"]), tensor_meta(m["a"])
    if x is None or a is None or x.dim() == 0:
        return "x or A has no recorded tensor metadata"
    return first_reason(dtype_supported(m["x"], "lora_linear"))


def _replace(graph: Graph, m: Match, base: tuple, adapters: tuple) -> Node:
    xs, a, b, s = adapters
    args = (m["x"], *base, m.get("bias"), [*xs, m["xi"]], [*a, m["a"]], [*b, m["b"]], [*s, m["scaling"]])
    new = graph.call_function(torch.ops.slipstream.lora_linear.default, args)
    dtype = m.get("term_dtype")
    if dtype is not None:  # peft cast the adapters' output to the base's dtype: the sum stays in that dtype
        new = graph.call_method("to", (new, dtype))
    return new


def _replace_dense(graph: Graph, m: Match) -> Node:
    w = tensor_meta(m["w"])
    return _replace(graph, m, (m["w"], None, None, "dense", 0, int(w.shape[0])), ([], [], [], []))


def _replace_quant(graph: Graph, m: Match) -> Node:
    base = (m["packed"], m["scales"], m["aux"], m["fmt"], m["group"], m["out_features"])
    return _replace(graph, m, base, ([], [], [], []))


def _replace_extend(graph: Graph, m: Match) -> Node:
    base = (m["base"], m["scales"], m["aux"], m["fmt"], m["group"], m["out_features"])
    return _replace(graph, m, base, (m["xs"], m["as"], m["bs"], m["scalings"]))


class FuseLoraLinear(Pass):
    name = "fuse-lora-linear"
    Options = PassOptions
    anchors = ("linear",)
    summary = "base(x) + B(A(dropout(x))) * s (peft LoRA, dense or quantized base) -> slipstream::lora_linear"

    def rules(self) -> list[Rule]:
        return [Rule("dense-base", Op("add", DENSE_BASE, TERM), _replace_dense, _check),
                Rule("quantized-base", Op("add", QUANT_BASE, TERM), _replace_quant, _check),
                Rule("more-adapters", Op("add", FUSED_BASE, TERM), _replace_extend, _check)]

    def is_anchor(self, node: Node) -> bool:
        """LoRA's B projection: a linear applied straight to a linear's output (A's)."""
        v = view(node)
        inner = view(v.inputs[0]) if v is not None and v.name == "linear" else None
        return inner is not None and inner.name == "linear"

    def run(self, graph: Graph) -> PassStats:
        """Rounds until nothing matches: each round fuses one more adapter of a multi-adapter layer. A layer
        counts once (rule dense-base or quantized-base); `more-adapters` matches are listed, not counted."""
        stats = PassStats(self.name)
        while True:
            round_stats = PassStats(self.name)
            found = self.find(graph, round_stats)
            if not found:
                stats.rejections = self._explain_dora(graph, round_stats.rejections)
                break
            self.apply(graph, found, stats)
        layers = {path for rule, path in stats.matches if rule != "more-adapters"}
        stats.matches = [(r, p) for r, p in stats.matches if r != "more-adapters" or p not in layers]
        return stats

    @staticmethod
    def _explain_dora(graph: Graph, rejections: list) -> list:
        """An unmatched B projection is a LoRA variant: say which one where the graph shows it (DoRA splits a
        layer over several graphs, so its magnitude vector is not always in the graph holding B)."""
        dora = any("magnitude" in n.name for n in graph.nodes if n.op == "placeholder")
        for r in rejections:
            if r.rule == "-":
                r.reason = ("DoRA (lora_magnitude_vector) is not supported: its weight-norm rescaling needs the full "
                            "weight, which slipstream::lora_linear never forms") if dora else (
                    "a linear on a linear's output that is not peft's `base(x) + B(A(x)) * s` (a LoRA variant such "
                    "as DoRA, which is not fused, or not LoRA at all)")
        return rejections
