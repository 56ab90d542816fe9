"""The numeric check per rewrite (`optimize(model, verify=True)`): accuracy localisation.

On a graph's first run, its input graph (kept by the trace) runs on the real inputs with every intermediate value
recorded. Each rewrite's replacement is then evaluated on the *recorded* values of the nodes it reads and
compared with the value the replaced region computed. A region reading another rewrite's output reads the
original value instead, so every region is judged on its own: the first region out of tolerance is where the
numbers go wrong, not merely where they end up wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Interpreter, Node
from torch.fx.node import map_aggregate

from .tolerance import TOLERANCES, max_rel_error


@dataclass
class RegionCheck:
    graph_id: int
    order: int                    # position of the replaced region's root in the input graph
    pass_name: str
    rule: str
    path: str
    root: str                     # stable names (graph_text.Namer)
    replacement: str
    dtype: str
    max_abs: float
    max_rel: float
    tolerance: float
    note: str = ""

    @property
    def skipped(self) -> bool:
        return self.note.startswith("skipped")

    @property
    def ok(self) -> bool:
        """Not out of tolerance (a skipped check is not a failure; a replacement that cannot run is)."""
        return self.skipped or (not self.note and self.max_rel <= self.tolerance)

    def line(self) -> str:
        head = f"{self.pass_name}:{self.rule} at {self.path or '<model>'} (graph {self.graph_id}, " \
               f"{self.root} -> {self.replacement})"
        if self.note:
            return f"{head}: {self.note}"
        return f"{head}: max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} vs {self.dtype} tolerance " \
               f"{self.tolerance:g}{'' if self.ok else ' OUT OF TOLERANCE'}"


def record_values(gm, args: tuple) -> dict[Node, Any]:
    interp = Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interp.run(*args)
    return interp.env


def check_graph(trace, args: tuple) -> list[RegionCheck]:
    """One RegionCheck per rewrite of `trace`'s graph, replacement vs replaced region on the recorded inputs."""
    values = record_values(trace.original, args)
    position = {n: i for i, n in enumerate(trace.original.graph.nodes)}
    aliases: dict[Node, Node] = {}
    for pass_diff in trace.passes:
        for hunk in pass_diff.hunks:
            for r in hunk.rewrites:
                aliases[r.replacement] = r.root

    def origin(node: Node) -> Node:
        """The input graph's node whose value `node` stands for (a replacement stands for what it replaced)."""
        while node not in trace.val_map and node in aliases:
            node = aliases[node]
        return trace.val_map[node]

    checks = []
    for pass_diff in trace.passes:
        for hunk in pass_diff.hunks:
            checks.extend(_check_hunk(trace, pass_diff.name, hunk, values, origin, position))
    return sorted(checks, key=lambda c: c.order)


def _check_hunk(trace, pass_name: str, hunk, values: dict, origin, position: dict) -> list[RegionCheck]:
    def value(node: Node) -> Any:
        return values[origin(node)]

    local: dict[Node, Any] = {}
    note = ""
    try:
        with torch.no_grad():
            for node, op, target, args, kwargs in hunk.steps:
                a, k = map_aggregate((args, kwargs), lambda x: local[x] if x in local else
                                     (value(x) if isinstance(x, Node) else x))
                local[node] = target(*a, **k) if op == "call_function" else getattr(a[0], target)(*a[1:], **k)
    except KeyError as e:
        note = f"skipped: input {e} was not recorded"
    except Exception as e:  # a replacement that cannot run on the recorded inputs is itself a finding
        note = f"replacement failed on the recorded inputs: {type(e).__name__}: {e}"
    checks = []
    for r in hunk.rewrites:
        expected = value(r.root) if not note else None
        actual = local.get(r.replacement) if not note else None
        if not note and r.replacement not in local:
            note_here = "skipped: superseded by a later rewrite in the same pass (checked there)"
            checks.append(_compare(trace.graph_id, position[origin(r.root)], pass_name, r, trace, None, None,
                                   note_here))
            continue
        checks.append(_compare(trace.graph_id, position[origin(r.root)], pass_name, r, trace, actual, expected, note))
    return checks


def _compare(graph_id, order, pass_name, r, trace, actual, expected, note) -> RegionCheck:
    ref = trace.namer.ref
    base = dict(graph_id=graph_id, order=order, pass_name=pass_name, rule=r.rule, path=r.path,
                root=ref(r.root), replacement=ref(r.replacement))
    if note:
        return RegionCheck(**base, dtype="-", max_abs=0.0, max_rel=0.0, tolerance=0.0, note=note)
    if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
        same = actual == expected
        return RegionCheck(**base, dtype=type(expected).__name__, max_abs=0.0, max_rel=0.0 if same else 1.0,
                           tolerance=0.0)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return RegionCheck(**base, dtype=str(expected.dtype).removeprefix("torch."), max_abs=0.0, max_rel=0.0,
                           tolerance=0.0, note=f"replacement gives {actual.dtype}{list(actual.shape)}, "
                                               f"the region {expected.dtype}{list(expected.shape)}")
    tol = TOLERANCES.get(expected.dtype)
    limit = tol.max_rel if tol is not None else 0.0  # integer results must match exactly
    diff = (actual.double() - expected.double()).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    max_rel = max_rel_error(actual, expected)
    if torch.isnan(actual).any() and not torch.isnan(expected).any():
        max_abs = max_rel = float("nan")
    return RegionCheck(**base, dtype=str(expected.dtype).removeprefix("torch."), max_abs=max_abs,
                       max_rel=max_rel if max_rel == max_rel else float("inf"), tolerance=limit)
