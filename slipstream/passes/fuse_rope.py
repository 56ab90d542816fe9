"""fuse-rope: `x * cos + rotate_half(x) * sin` (full or partial rotary) -> slipstream::rope.

Two rotations: halves (Llama's `cat((-x[..., h:], x[..., :h]), -1)`) and interleaved neighbours (GLM, Helium,
Ernie 4.5, Cohere: `stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`, the op's `interleaved`).

Applications to q and k that share cos/sin in one module become one call (one kernel launch for both).
cos/sin arrive broadcast over heads: `[b, 1, s, r]` (heads at dim 1, the Hugging Face default) or `[b, s, 1, r]`
(heads at dim 2, handled with free transposes). Anything else is refused with the layout in the reason.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import Graph, Node

from .base import Pass, PassStats, Rule, commit, tag_new_nodes
from .checks import dtype_supported, first_reason, same_size, scalar
from .ops import module_path, tensor_meta, view
from .pattern import Match, Op, Var

COS, SIN, Q = Var("cos"), Var("sin"), Var("x")


def _rotated(x) -> Op:
    half = Var("half")
    return Op("cat", Op("neg", Op("slice", x, dim=-1, start=half, end=Var("end"))),
              Op("slice", x, dim=-1, start=0, end=half), dim=-1)


def _rotated_interleaved(x) -> Op:
    def every_other(start: int) -> Op:
        return Op("strided_slice", x, dim=-1, start=start, end=Var(f"end{start}"), step=2)
    return Op("flatten", Op("stack", Op("neg", every_other(1)), every_other(0), dim=-1), start_dim=-2, end_dim=-1)


def _apply(x, rotated=_rotated) -> Op:
    return Op("add", Op("mul", x, COS), Op("mul", rotated(x), SIN))


def _partial(rotated) -> Op:
    rot_part = Op("slice", Q, dim=-1, start=0, end=Var("rdim"), tag="rot_part")
    return Op("cat", _apply(rot_part, rotated), Op("slice", Q, dim=-1, start=Var("rdim"), end=Var("dim_end")), dim=-1)


PARTIAL, FULL = _partial(_rotated), _apply(Q)
PARTIAL_INTERLEAVED, FULL_INTERLEAVED = _partial(_rotated_interleaved), _apply(Q, _rotated_interleaved)


def _interleaved(m: Match) -> bool:
    """Whether the match rotates neighbouring dims (the interleaved rules bind their strided slices' ends)."""
    return "end0" in m.bindings


def _heads_dim(m: Match) -> int | None:
    """Where cos/sin broadcast over heads: 1 for [b,1,s,r] with x [b,h,s,d], 2 for [b,s,1,r] with x [b,s,h,d]."""
    x, cos = tensor_meta(m["x"]), tensor_meta(m["cos"])
    if x.dim() != 4 or cos.dim() != 4:
        return None
    for hd, sd in ((1, 2), (2, 1)):
        if cos.shape[hd] == 1 and same_size(cos.shape[sd], x.shape[sd]) and (
                cos.shape[0] == 1 or same_size(cos.shape[0], x.shape[0])):
            return hd
    return None


def _check(m: Match) -> str | None:
    x, cos, sin = tensor_meta(m["x"]), tensor_meta(m["cos"]), tensor_meta(m["sin"])
    if x is None or cos is None or sin is None:
        return "q/k, cos or sin is not a tensor"
    rdim = cos.shape[-1]
    if tuple(cos.shape) != tuple(sin.shape):
        return f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ in shape"
    if "rdim" in m.bindings and not same_size(m["rdim"], rdim):
        return f"rotary slice {m['rdim']} differs from cos/sin width {rdim}"
    if _interleaved(m):
        if not (same_size(m["end0"], rdim) and same_size(m["end1"], rdim)):
            return f"the interleaved rotation reads {m['end0']} dims, not the rotary width {rdim}"
    else:
        half = scalar(m["half"])
        if half is None or not (same_size(half, rdim // 2) or same_size(2 * half, rdim)) \
                or not same_size(m["end"], rdim):
            return f"rotate_half splits at {half}, not half of the rotary width {rdim}"
    if _heads_dim(m) is None:
        return (f"cos/sin layout {tuple(cos.shape)} against q/k {tuple(x.shape)} is not [b,1,s,r] or [b,s,1,r]")
    if cos.dtype != x.dtype or sin.dtype != x.dtype:
        return f"cos/sin dtype {cos.dtype} differs from q/k dtype {x.dtype} (eager would promote)"
    if cos.requires_grad or sin.requires_grad:
        return "cos/sin require grad; slipstream::rope does not differentiate them"
    return first_reason(dtype_supported(m["x"], "rope"))


class FuseRope(Pass):
    name = "fuse-rope"
    anchors = ("neg",)
    summary = "q * cos + rotate_half(q) * sin (halves or interleaved, full or partial rotary; q and k together) " \
              "-> slipstream::rope"

    def is_anchor(self, node: Node) -> bool:
        """rotate_half's `neg` (a negated slice feeding a cat or stack), not any negation."""
        v = view(node)
        return (v is not None and v.name == "neg"
                and getattr(view(v.inputs[0]), "name", None) in ("slice", "strided_slice")
                and any(getattr(view(u), "name", None) in ("cat", "stack") for u in node.users))

    def rules(self) -> list[Rule]:
        return [Rule("partial-rotary", PARTIAL, None, _check), Rule("rotate-half", FULL, None, _check),
                Rule("partial-interleaved", PARTIAL_INTERLEAVED, None, _check),
                Rule("interleaved", FULL_INTERLEAVED, None, _check)]

    def apply(self, graph: Graph, found: list, stats: PassStats) -> None:
        order = {n: i for i, n in enumerate(graph.nodes)}
        groups: dict[tuple, list[tuple[Rule, Match]]] = {}
        for rule, m in found:
            key = (m["cos"], m["sin"], module_path(m.root), _heads_dim(m), _interleaved(m))
            groups.setdefault(key, []).append((rule, m))
        for (cos, sin, path, heads_dim, interleaved), members in groups.items():
            members.sort(key=lambda rm: order[rm[1].root])
            while members:
                pair = members[:2] if _can_pair(members[:2], order) else members[:1]
                del members[:len(pair)]
                self._rewrite(graph, pair, cos, sin, heads_dim, interleaved, stats)

    def _rewrite(self, graph: Graph, pair: list, cos: Node, sin: Node, heads_dim: int, interleaved: bool,
                 stats: PassStats) -> None:
        first = pair[0][1].root
        anchor = first.prev
        with graph.inserting_before(first):
            xs = [_to_bhsd(graph, m["x"], heads_dim) for _, m in pair]
            c, s = (_without_heads_dim(graph, t, heads_dim) for t in (cos, sin))
            q, k = (xs[0], xs[1]) if len(xs) == 2 else (xs[0], xs[0])
            layout = (True,) if interleaved else ()  # the op's default (halves) is left out of the node
            both = graph.call_function(torch.ops.slipstream.rope.default, (q, k, c, s, *layout))
            outs = [_to_bhsd(graph, graph.call_function(operator.getitem, (both, i)), heads_dim) for i in range(len(pair))]
        label = "+".join(rule.name for rule, _ in pair)
        tag_new_nodes(anchor, first, f"{self.name}:{label}", module_path(first))
        for (rule, m), out in zip(pair, outs):
            commit(graph, m, out, rule.name, stats)
        for t in (cos, sin):
            if t not in (c, s) and not t.users:  # the unsqueeze bypassed above, now unused
                stats.rewrites[-1].matched.append(t)  # shown as removed in the graph diff
                graph.erase_node(t)


def _without_heads_dim(graph: Graph, t: Node, heads_dim: int) -> Node:
    """cos/sin as [b, s, r]: the tensor the model unsqueezed (HF's `cos.unsqueeze(1)`) when it did, else a squeeze."""
    v = view(t)
    if v is not None and v.name == "unsqueeze" and v.params["dim"] % 4 == heads_dim:
        return v.inputs[0]
    return graph.call_method("squeeze", (t, heads_dim))


def _to_bhsd(graph: Graph, x: Node, heads_dim: int) -> Node:
    """[b,s,h,d] <-> [b,h,s,d] by a (free) transpose when heads sit at dim 2; identity otherwise."""
    return x if heads_dim == 1 else graph.call_method("transpose", (x, 1, 2))


def _can_pair(members: list, order: dict) -> bool:
    """Two applications share one call if every input of both is defined before the first root."""
    if len(members) < 2:
        return False
    first = min(order[m.root] for _, m in members)
    inputs = [m[k] for _, m in members for k in ("x", "cos", "sin")]
    return all(order[i] < first for i in inputs if isinstance(i, Node))
