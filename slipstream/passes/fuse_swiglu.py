"""fuse-swiglu: `act(gate) * up` for SiLU (SwiGLU) and GELU erf/tanh (GeGLU) -> slipstream::swiglu / geglu.

The gate and up projections stay as they are (they are matmuls); the activation and the product become one
elementwise kernel, forward and backward. Works on separate gate/up projections and on a fused `gate_up` split
by `chunk` alike, since only the activation and the product are matched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import Graph

from .base import Pass, PassOptions, Rule
from .checks import dtype_supported, first_reason, same_shape
from .ops import tensor_meta
from .pattern import Match, Op, Var

G, U = Var("gate"), Var("up")


@dataclass(frozen=True)
class FuseSwigluOptions(PassOptions):
    geglu: bool = True      # also fuse GELU-gated MLPs (Gemma)


def _check(op: str):
    def check(m: Match) -> str | None:
        g, u = tensor_meta(m["gate"]), tensor_meta(m["up"])
        if g is None or u is None:
            return "gate or up is not a tensor"
        if not same_shape(m["gate"], m["up"]):
            return f"gate {tuple(g.shape)} and up {tuple(u.shape)} differ in shape (broadcasting is not fused)"
        if g.dtype != u.dtype:
            return f"gate ({g.dtype}) and up ({u.dtype}) differ in dtype"
        return first_reason(dtype_supported(m["gate"], op))
    return check


def _replace_swiglu(graph: Graph, m: Match):
    return graph.call_function(torch.ops.slipstream.swiglu.default, (m["gate"], m["up"]))


def _replace_geglu(graph: Graph, m: Match):
    return graph.call_function(torch.ops.slipstream.geglu.default, (m["gate"], m["up"], m["approximate"]))


def _check_geglu(m: Match) -> str | None:
    if m["approximate"] not in ("none", "tanh"):
        return f"gelu approximate={m['approximate']!r} is not supported (none, tanh)"
    return _check("geglu")(m)


class FuseSwiglu(Pass):
    name = "fuse-swiglu"
    Options = FuseSwigluOptions
    anchors = ("silu", "gelu")
    summary = "silu(gate) * up -> slipstream::swiglu; gelu(gate) * up -> slipstream::geglu"

    def rules(self) -> list[Rule]:
        rules = [Rule("silu-times-up", Op("mul", Op("silu", G), U), _replace_swiglu, _check("swiglu"))]
        gelu = Rule("gelu-times-up", Op("mul", Op("gelu", G, approximate=Var("approximate")), U),
                    _replace_geglu, _check_geglu)
        if self.options.geglu:
            rules.append(gelu)
        else:
            rules.append(Rule(gelu.name, gelu.pattern, _replace_geglu, lambda m: "disabled by option geglu=false"))
        return rules
