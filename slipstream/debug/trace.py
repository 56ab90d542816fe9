"""What each pass did to one captured graph, recorded while the passes run (the PassManager's observer).

Per pass: the nodes it removed and added, grouped into hunks (one per rewrite, or per group of rewrites that
share new nodes, such as RoPE's q and k in one call), with the rule, module path and the original nodes each
hunk replaces; its matches and refusals; its time. Node text is rendered *before* a pass runs, because erasing a
node clears its arguments. Optionally keeps a copy of the input graph (numeric check, bisection) and the
graph's Python after each changed pass (dump directory).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch.fx import Graph, GraphModule, Node

from ..passes.base import Pass, PassStats, Rejection, Rewrite
from .graph_text import Namer


@dataclass
class RegionNode:
    """A node of a region picture: `kind` is removed, added or input (a value the region reads)."""
    ref: str
    label: str
    kind: str
    inputs: list[str]


@dataclass
class Hunk:
    path: str
    rules: list[str]
    replaces: list[tuple[str, str]]          # (original root, replacement) by stable name
    removed: list[str]                       # node lines
    added: list[str]
    before: list[RegionNode] = field(default_factory=list)
    after: list[RegionNode] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    steps: list[tuple] = field(default_factory=list)   # (node, op, target, args, kwargs) of the new nodes, frozen


@dataclass
class PassDiff:
    name: str
    seconds: float
    hunks: list[Hunk]
    matches: Counter
    rejections: list[Rejection]
    code: str | None = None                  # the graph's Python after this pass (dump directory)

    @property
    def changed(self) -> bool:
        return bool(self.hunks)


class GraphTrace:
    def __init__(self, graph_id: int, unit: str, gm: GraphModule, keep_original: bool = False,
                 keep_code: bool = False):
        self.graph_id, self.unit, self.keep_code = graph_id, unit, keep_code
        self.namer = Namer(gm.graph)
        self.input_lines = [self.namer.line(n) for n in gm.graph.nodes]
        self.ops = sum(n.op not in ("placeholder", "output") for n in gm.graph.nodes)  # inputs vary, see Namer
        self.input_code = gm.graph.python_code("self").src if keep_code else None
        self.passes: list[PassDiff] = []
        self.original, self.val_map = copy_graph_module(gm) if keep_original else (None, {})
        self._lines: dict[Node, str] = {}
        self._inputs: dict[Node, list[Node]] = {}

    @property
    def rewrites(self) -> list[tuple[str, Rewrite]]:
        return [(p.name, r) for p in self.passes for h in p.hunks for r in h.rewrites]

    def applications(self, pass_name: str) -> int:
        return sum(len(h.rewrites) for p in self.passes if p.name == pass_name for h in p.hunks)

    # -- PassManager observer ---------------------------------------------------------------------------------
    def before_pass(self, p: Pass, graph: Graph) -> None:
        self._lines = {n: self.namer.line(n) for n in graph.nodes}
        self._inputs = {n: list(n.all_input_nodes) for n in graph.nodes}

    def after_pass(self, p: Pass, graph: Graph, stats: PassStats) -> None:
        self.namer.extend(graph)
        for r in stats.rewrites:
            self.namer.add(r.replacement)
        present = list(graph.nodes)
        added = [n for n in present if n not in self._lines]
        hunks = self._hunks(stats.rewrites, set(present), added)
        code = graph.python_code("self").src if self.keep_code and hunks else None
        self.passes.append(PassDiff(p.name, stats.seconds, hunks, Counter(r for r, _ in stats.matches),
                                    list(stats.rejections), code))

    # -- hunks ------------------------------------------------------------------------------------------------
    def _hunks(self, rewrites: list[Rewrite], present: set, added: list[Node]) -> list[Hunk]:
        """Group rewrites that share new nodes (RoPE's q and k) or build on each other within the pass (a second
        LoRA adapter folded into the first one's call); removed nodes are those that existed before the pass."""
        added_set = set(added)
        groups: list[tuple[set, list[Rewrite]]] = []
        for r in rewrites:
            created = _created_by(r.replacement, added_set) | {r.replacement}
            for group in groups:
                if group[0] & (created | set(r.matched)):
                    group[0].update(created)
                    group[1].append(r)
                    break
            else:
                groups.append((created, [r]))
        order = {n: i for i, n in enumerate(self._lines)}
        hunks = []
        for created, members in groups:
            removed = sorted({n for r in members for n in r.matched if n not in present and n in order},
                             key=order.__getitem__)
            new = [n for n in added if n in created]
            hunks.append(self._hunk(members, removed, new))
        return hunks

    def _hunk(self, members: list[Rewrite], removed: list[Node], new: list[Node]) -> Hunk:
        ref = self.namer.ref
        lines = [self._lines[n] for n in removed]
        creators = [n.meta.get("slipstream_created_by", "?") for n in new]
        added = [f"{self.namer.line(n)}  [{c}]" for n, c in zip(new, creators)]
        before = _region([(ref(n), self._lines[n], self._inputs[n]) for n in removed], "removed", ref)
        after = _region([(ref(n), self.namer.line(n), n.all_input_nodes) for n in new], "added", ref)
        steps = [(n, n.op, n.target, n.args, dict(n.kwargs)) for n in new]  # later passes may erase these nodes
        return Hunk(members[0].path, [r.rule for r in members], [(ref(r.root), ref(r.replacement)) for r in members],
                    lines, added, before, after, list(members), steps)


def _created_by(replacement: Any, added: set) -> set:
    """The new nodes a replacement value is computed from (walking inputs while they are new)."""
    seen, stack = set(), [replacement] if isinstance(replacement, Node) else []
    while stack:
        n = stack.pop()
        if n in added and n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _region(nodes: list[tuple[str, str, list[Node]]], kind: str, ref) -> list[RegionNode]:
    inside = {r for r, _, _ in nodes}
    out, seen_inputs = [], []
    for r, line, inputs in nodes:
        for i in inputs:
            if ref(i) not in inside and ref(i) not in seen_inputs:
                seen_inputs.append(ref(i))
        label = line.split(" = ", 1)[-1]
        out.append(RegionNode(r, label, kind, [ref(i) for i in inputs]))
    return [RegionNode(r, r, "input", []) for r in seen_inputs] + out


def copy_graph_module(gm: GraphModule) -> tuple[GraphModule, dict[Node, Node]]:
    """A runnable copy of `gm` before any pass, and the map from its nodes to the copy's."""
    graph, val_map = Graph(), {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    return GraphModule(gm, graph), val_map
