"""fuse-rms-norm: `x * rsqrt(mean(x^2) + eps)` times a weight -> slipstream::rms_norm.

Three forms cover the families we know (and, by shape, those we don't):
- weight-times-cast:        w * norm(x).to(dtype)                   (Llama, Qwen, Mistral, Phi-3, Granite, ...)
- cast-of-weighted:         (w * norm(x)).to(dtype)                 (OLMo-2; Helium writes w.float() * norm(x))
- cast-of-offset-weighted:  (norm(x) * (offset + w.float())).to(dtype) (Gemma 1/2/3: offset 1)
eps and offset are captured, never matched exactly.
"""
from __future__ import annotations

import torch
from torch.fx import Graph

from .base import Pass, Rule
from .checks import dtype_supported, first_reason, is_leaf_tensor, same_size
from .ops import tensor_meta
from .pattern import Lit, Match, Op, Var

X, W = Var("x"), Var("weight")
_X32 = Op("cast", X, boundary=True) | X   # the upcast may also feed the residual; it stays if it does
NORMED = Op("mul", _X32, Op("rsqrt", Op("add", Op("mean", Op("pow", _X32, exponent=2), dim=(-1,), keepdim=True),
                                         Lit("eps"))), tag="normed")


def _output_dtype(m: Match, cast_first: bool) -> torch.dtype:
    x, w = tensor_meta(m["x"]), tensor_meta(m["weight"])
    return torch.promote_types(x.dtype, w.dtype) if cast_first else x.dtype


def _check(cast_first: bool):
    def check(m: Match) -> str | None:
        x, w = tensor_meta(m["x"]), tensor_meta(m["weight"])
        if w is None or not is_leaf_tensor(m["weight"]):
            return "the weight is computed in the graph, not a parameter"
        if w.dim() != 1 or not same_size(w.shape[0], x.shape[-1]):
            return f"weight shape {tuple(w.shape)} does not match the normalized size {x.shape[-1]}"
        if "weight_cast" in m.bindings:  # w.float() * norm(x): the op's promotion does the same, exactly
            cast, normed = tensor_meta(m["weight_cast"]), tensor_meta(m["normed"])
            if cast.dtype != normed.dtype or torch.promote_types(w.dtype, normed.dtype) != normed.dtype:
                return f"the weight is cast to {cast.dtype}, not to the norm's {normed.dtype}"
        out = tensor_meta(m.root)
        expected = _output_dtype(m, cast_first)
        return first_reason(
            dtype_supported(m["x"], "rms_norm"), dtype_supported(m["weight"], "rms_norm"),
            None if out is not None and out.dtype == expected
            else f"output dtype {getattr(out, 'dtype', None)} differs from the op's {expected}")
    return check


def _replace(cast_first: bool):
    def replace(graph: Graph, m: Match):
        offset = float(m.get("offset", 0.0))
        return graph.call_function(torch.ops.slipstream.rms_norm.default,
                                   (m["x"], m["weight"], m["eps"], offset, cast_first))
    return replace


class FuseRmsNorm(Pass):
    name = "fuse-rms-norm"
    anchors = ("rsqrt",)
    summary = "x * rsqrt(mean(x^2) + eps) * weight (also Gemma's 1 + weight) -> slipstream::rms_norm"

    def rules(self) -> list[Rule]:
        offset_weight = Op("add", Op("cast", W) | W, Lit("offset"))
        return [
            Rule("cast-of-offset-weighted", Op("cast", Op("mul", NORMED, offset_weight)),
                 _replace(False), _check(False)),
            Rule("cast-of-weighted", Op("cast", Op("mul", Op("cast", W, tag="weight_cast") | W, NORMED)),
                 _replace(False), _check(False)),
            Rule("weight-times-cast", Op("mul", W, Op("cast", NORMED)), _replace(True), _check(True)),
            Rule("weight-times-norm", Op("mul", W, NORMED), _replace(True), _check(True)),
        ]
