"""Pass and Rule: the unit of rewriting.

A Rule is data: a pattern, a `check` that returns None (go) or a reason string (refuse), and a `replace` that
emits the canonical-op call. A Pass is a named list of rules plus frozen options; `run(graph)` is a pure
function of (graph, options) -> stats, mutating only the nodes it matched.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from torch.fx import Graph, Node

from ..context import REWRITE_BUDGET
from .ops import is_size_computation, module_path, view
from .pattern import Match, Pattern, describe, is_metadata_assert, match, near_miss, outside_users

@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Pattern
    replace: Callable[[Graph, Match], Any]      # emits new nodes; returns the value replacing the root
    check: Callable[[Match], str | None] = lambda m: None


@dataclass
class Rejection:
    rule: str
    path: str
    reason: str


@dataclass
class Rewrite:
    """One applied match, for the graph diff and the numeric check: the matched nodes (some now erased), the
    node whose value the match computed (`root`) and the node that now computes it (`replacement`)."""
    rule: str
    path: str
    root: Node
    replacement: Node
    matched: list[Node]


@dataclass
class PassStats:
    name: str
    matches: list[tuple[str, str]] = field(default_factory=list)      # (rule, module path)
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0
    rewrites: list[Rewrite] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.matches or self.rewrites)


@dataclass(frozen=True)
class PassOptions:
    """Options every pass takes: which module paths it may touch (fnmatch globs, `|`-separated)."""
    include: str = "*"
    exclude: str = ""


def path_selected(path: str, options: PassOptions) -> bool:
    def hit(globs: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in globs.split("|") if g)
    return hit(options.include) and not hit(options.exclude)


class Pass:
    """Subclasses set `name`, `Options`, `anchors` (op names, one of which every match contains) and `rules()`.

    A pass with `stage = "module"` (see ModulePass) rewrites the module tree before capture instead of graphs."""
    name: ClassVar[str]
    Options: ClassVar[type] = PassOptions
    anchors: ClassVar[tuple[str, ...]]
    summary: ClassVar[str] = ""
    stage: ClassVar[str] = "graph"

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    def rules(self) -> list[Rule]:
        raise NotImplementedError

    def is_anchor(self, node: Node) -> bool:
        """A node every match contains; an anchor no rule covers is reported, so nothing is skipped silently."""
        return _is(node, self.anchors)

    def run(self, graph: Graph) -> PassStats:
        stats = PassStats(self.name)
        start = time.perf_counter()
        found = self.find(graph, stats)
        self.apply(graph, found, stats)
        stats.seconds = time.perf_counter() - start
        return stats

    # -- matching ---------------------------------------------------------------------------------------------
    def find(self, graph: Graph, stats: PassStats) -> list[tuple[Rule, Match]]:
        """All accepted matches, non-overlapping; refusals go to stats. Roots are tried from the graph's end, so
        the largest form of a pattern wins (partial RoPE's `cat` before the `add` inside it)."""
        if not any(self.is_anchor(n) for n in graph.nodes):
            return []
        rules, taken, found, refused_anchors = self.rules(), set(), [], set()
        for node in reversed(list(graph.nodes)):
            for rule in rules:
                m = match(rule.pattern, node)
                if m is None or taken.intersection(m.nodes):
                    continue
                reason = self.refusal(rule, m)
                anchors = [n for n in m.nodes if self.is_anchor(n)]
                if reason is not None:
                    if not refused_anchors.intersection(anchors):
                        stats.rejections.append(Rejection(rule.name, module_path(node), reason))
                    refused_anchors.update(anchors)
                    continue
                taken.update(m.nodes)
                found.append((rule, m))
                break
        self.report_unmatched(graph, taken | refused_anchors, stats)
        found.reverse()
        budget = REWRITE_BUDGET.get()
        return budget.take(self.name, found) if budget is not None else found

    def refusal(self, rule: Rule, m: Match) -> str | None:
        path = module_path(m.root)
        if not path_selected(path, self.options):
            return f"module path '{path}' excluded by the include/exclude options"
        leaked = outside_users(m)
        if leaked:
            users = ", ".join(sorted({u.name for n in leaked for u in n.users if u not in m.nodes}))
            return f"intermediate '{leaked[0].name}' is also used outside the pattern (by {users})"
        return rule.check(m)

    def report_unmatched(self, graph: Graph, covered: set, stats: PassStats) -> None:
        rules = None
        for node in graph.nodes:
            if self.is_anchor(node) and node not in covered:
                rules = rules or self.rules()
                reason = f"{describe(node)} fits none of this pass's rules"
                stats.rejections.append(Rejection("-", module_path(node), reason + closest_rule(node, rules)))

    # -- rewriting --------------------------------------------------------------------------------------------
    def apply(self, graph: Graph, found: list[tuple[Rule, Match]], stats: PassStats) -> None:
        for rule, m in found:
            anchor = m.root.prev
            with graph.inserting_before(m.root):
                new = rule.replace(graph, m)
            tag_new_nodes(anchor, m.root, f"{self.name}:{rule.name}", module_path(m.root))
            commit(graph, m, new, rule.name, stats)


class ModulePass(Pass):
    """A pass over the module tree, run once before capture (in pipeline order, ahead of every graph pass): for
    rewrites that change what a graph's inputs are, such as swapping a linear's weight for packed buffers.
    `run_module` returns the same stats a graph pass does (matches and refusals by module path) plus `notes`,
    lines for explain()."""
    stage = "module"
    anchors = ()

    def run_module(self, model: Any) -> tuple[PassStats, list[str]]:
        raise NotImplementedError


NEAR_MISS_DEPTH, NEAR_MISS_ROOTS = 6, 32  # an anchor's users this many steps down (at most this many) are tried


def closest_rule(anchor: Node, rules: list[Rule]) -> str:
    """'; closest: ...' naming the rule that got furthest from a root at or below an unmatched anchor, and what it
    wanted where it stopped; '' if no rule matched a single node there. Runs only for unmatched anchors."""
    roots, frontier = [anchor], [anchor]
    for _ in range(NEAR_MISS_DEPTH):
        frontier = list(dict.fromkeys(u for n in frontier for u in n.users if u not in roots))
        roots += frontier[:NEAR_MISS_ROOTS - len(roots)]

    def rank(miss):  # the furthest in; of those, one on the anchor's own path (found the anchor or a node from it)
        return miss.progress, _reads(miss.node, anchor), not miss.commuted
    misses = ((miss, rule, root) for root in roots for rule in rules
              if (miss := near_miss(rule.pattern, root, rank)) is not None and miss.progress > 0)
    best = max(misses, key=lambda found: rank(found[0]), default=None)  # of equals, the first root and rule
    if best is None:
        return ""
    miss, rule, root = best
    return (f"; closest: rule '{rule.name}' from '{root.name}' matched {miss.progress} node(s), then wanted "
            f"{miss.expected} where it found {miss.found}")


def _reads(node: Node | None, anchor: Node, depth: int = NEAR_MISS_DEPTH) -> bool:
    """Whether `node` is `anchor` or computed from it within `depth` steps."""
    frontier = {node} if node is not None else set()
    for _ in range(depth + 1):
        if anchor in frontier:
            return True
        frontier = {p for n in frontier for p in n.all_input_nodes}
    return False


def _is(node: Node, op_names: tuple[str, ...]) -> bool:
    v = view(node)
    return v is not None and v.name in op_names


def commit(graph: Graph, m: Match, new: Node, rule: str, stats: PassStats) -> None:
    """Swap the match's root for `new`, erase what became dead, count the match."""
    replace_root(m, new)
    orphans = erase_matched(graph, m.nodes)
    stats.matches.append((rule, module_path(m.root)))
    stats.rewrites.append(Rewrite(rule, module_path(m.root), m.root, new, list(m.nodes) + orphans))


def replace_root(m: Match, new: Node) -> None:
    """Point every user of the match's root at `new`, carrying the root's metadata over."""
    for key in ("val", "example_value", "nn_module_stack", "slipstream_path", "stack_trace"):
        if key in m.root.meta and key not in new.meta:
            new.meta[key] = m.root.meta[key]
    m.root.replace_all_uses_with(new)


def erase_matched(graph: Graph, nodes: list[Node]) -> list[Node]:
    """Erase matched nodes that became dead, users first, and with them the size reads and arithmetic only they used
    (`x.size(-1) // 2` as a slice bound); returns those. Never a blanket dead-code elimination: graphs can hold
    side-effecting nodes (KV-cache writes) that have no users."""
    matched = set(nodes)
    for n in nodes:
        for user in [u for u in n.users if is_metadata_assert(u)]:
            graph.erase_node(user)
    sizes = {s for n in nodes for s in (*n.all_input_nodes, *n.users) if s not in matched and is_size_computation(s)}
    pending, orphans, progress = list(nodes), [], True
    while progress:
        progress = False
        for n in [n for n in pending + list(sizes) if not n.users]:
            sizes.update(p for p in n.all_input_nodes if p not in matched and is_size_computation(p))
            graph.erase_node(n)
            if n in matched:
                pending.remove(n)
            else:
                sizes.discard(n)
                orphans.append(n)
            progress = True
    return orphans


def tag_new_nodes(after: Node, until: Node, creator: str, path: str) -> None:
    """Record which pass and rule created the nodes inserted between `after` and `until` (for the graph diff)."""
    n = after.next
    while n is not until:
        n.meta.setdefault("slipstream_created_by", creator)
        n.meta.setdefault("slipstream_path", path)
        n = n.next
