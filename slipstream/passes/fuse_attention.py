"""fuse-attention: scaled-dot-product attention, however the graph spells it -> slipstream's attention dispatch.

Two forms, as Hugging Face writes them:
- sdpa:  `scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, scale, is_causal)`, k/v possibly repeated
          for GQA (`x[:, :, None].expand(...).reshape(...)`);
- eager: `softmax(q @ k^T * scale [-> tanh soft-cap] [+ mask], fp32).to(dtype) [-> dropout] @ v`.
The repeat_kv is looked through (the fused kernels handle GQA natively). What the mask *is* (causal, padding,
sliding window, arbitrary) is decided per call at run time by slipstream.kernels.attention_dispatch, since
Hugging Face builds it outside the layer; the choice and its reason show in explain().
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import Graph, Node

from ..kernels import attention_dispatch
from .base import Pass, PassOptions, Rule
from .checks import dtype_supported, first_reason, same_size
from .ops import site_path, tensor_meta, view
from .pattern import Lit, Match, Op, Var

Q, K, V = Var("q"), Var("k"), Var("v")


@dataclass(frozen=True)
class FuseAttentionOptions(PassOptions):
    impl: str = "auto"      # auto | triton | reference: what the run-time selection may pick

    def __post_init__(self):
        if self.impl not in attention_dispatch.IMPLS:
            raise ValueError(f"impl must be one of {', '.join(attention_dispatch.IMPLS)}, not {self.impl!r}")


def strip_repeat_kv(x: Node) -> Node:
    """`x[:, :, None].expand(b, h, n, t, d).reshape(b, h * n, t, d)` -> x (GQA's repeat_kv); else x itself."""
    r = view(x)
    if r is None or r.name != "reshape":
        return x
    e = view(r.inputs[0])
    if e is None or e.name != "expand":
        return x
    u = view(e.inputs[0])
    if u is None or u.name != "unsqueeze" or u.params["dim"] != -3:
        return x
    base, out = tensor_meta(u.inputs[0]), tensor_meta(x)
    if base is None or out is None or base.dim() != 4 or out.dim() != 4:
        return x
    return u.inputs[0]


def _check(m: Match) -> str | None:
    q, k, v = (tensor_meta(m[n]) for n in "qkv")
    if q is None or k is None or v is None or q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k and v are not all [batch, heads, seq, head_dim] tensors"
    kv = tensor_meta(strip_repeat_kv(m["k"]))
    if not (same_size(q.shape[-1], k.shape[-1]) and same_size(k.shape[-1], v.shape[-1])):
        return f"head dims differ: q {q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]}"
    if isinstance(q.shape[1], int) and isinstance(kv.shape[1], int) and q.shape[1] % kv.shape[1]:
        return f"{q.shape[1]} query heads are not a multiple of {kv.shape[1]} key/value heads"
    if "softcap" in m.bindings and not _same_scalar(m["softcap"], m["softcap_mul"]):
        return "soft-cap divides and multiplies by different values"
    return first_reason(dtype_supported(m["q"], "attention"))


def _same_scalar(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, Node) and isinstance(b, Node):
        # dynamo reads the same module attribute twice: two `.item()` calls on one graph input
        return a.op == b.op == "call_method" and a.target == b.target == "item" and a.args[0] is b.args[0]
    return not isinstance(a, Node) and not isinstance(b, Node) and a == b


class FuseAttention(Pass):
    name = "fuse-attention"
    Options = FuseAttentionOptions
    anchors = ("sdpa", "softmax")
    summary = "sdpa / eager softmax(q k^T) v (GQA, soft-cap, masks) -> slipstream attention with run-time dispatch"

    def rules(self) -> list[Rule]:
        sdpa = Op("sdpa", Q, K, V, attn_mask=Var("mask"), dropout_p=Lit("dropout_p"), is_causal=Var("causal"),
                  scale=Var("scale"), enable_gqa=Var("enable_gqa"))
        scores = Op("mul", Op("matmul", Q, Op("transpose", K, dims=(-2, -1))), Lit("scale"))
        capped = Op("mul", Op("tanh", Op("div", scores, Lit("softcap"))), Lit("softcap_mul")) | scores
        masked = Op("add", capped, Var("mask")) | capped
        probs = Op("cast", Op("softmax", masked, dim=-1, dtype=torch.float32), tag="weights")
        dropped = Op("dropout", probs, p=Lit("dropout_p"), training=Var("training")) | probs
        eager = Op("matmul", dropped, V)
        return [Rule("sdpa", sdpa, self._replace("sdpa"), _check),
                Rule("eager-softmax", eager, self._replace("eager"), _check)]

    def refusal(self, rule: Rule, m: Match) -> str | None:
        reason = super().refusal(rule, m)
        if reason and "weights" in m.bindings and "also used outside" in reason:
            return ("the attention weights are used outside (e.g. output_attentions=True): the fused op never "
                    f"forms them ({reason})")
        return reason

    def _replace(self, form: str):
        impl = self.options.impl

        def replace(graph: Graph, m: Match):
            k, v = strip_repeat_kv(m["k"]), strip_repeat_kv(m["v"])
            kwargs = dict(causal=bool(m.get("causal", False)), scale=m.get("scale"),
                          dropout_p=m.get("dropout_p", 0.0),
                          # sdpa drops whenever dropout_p > 0 (HF passes 0.0 outside training)
                          training=bool(m.get("training", form == "sdpa")),
                          softcap=m.get("softcap", 0.0), form=form, impl=impl, site=site_path(m.root),
                          unit=m.root.meta.get("slipstream_unit", ""))
            return graph.call_function(attention_dispatch.attention, (m["q"], k, v, m["k"], m["v"], m.get("mask")),
                                       kwargs)
        return replace
