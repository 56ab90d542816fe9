"""Bisection: the first rewrite that makes the model's output drift out of tolerance.

Capture happens once. Every captured graph keeps its input graph, and a *probe* decides which variant of it runs:
the first `passes` graph passes of the pipeline, the last of them limited to its first `limit` applications
(counted over all graphs in capture order, like LLVM's -opt-bisect-limit). Each probe is one forward: the passes
rerun on a copy of each graph (milliseconds), dynamo is not involved again. The reference output is the probe
with no passes, the captured graphs as they came; "drift" is max|out - ref| / max|ref| against the output
dtype's tolerance. Passes are bisected first, then single applications of the culprit pass.

Module passes (quantize-weights) run before capture, so they are always applied: their drift is the baseline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..context import BISECT_PROBE, REWRITE_BUDGET
from .tolerance import max_rel_error, tolerance
from .trace import copy_graph_module


class Budget:
    """How many more matches one pass may apply (Pass.find truncates its list of accepted matches)."""

    def __init__(self, pass_name: str, remaining: int):
        self.pass_name, self.remaining = pass_name, remaining

    def take(self, pass_name: str, found: list) -> list:
        if pass_name != self.pass_name:
            return found
        kept = found[:max(0, self.remaining)]
        self.remaining -= len(kept)
        return kept


class Probe:
    def __init__(self, report, passes: int, limit: int | None = None):
        self.report, self.passes, self.limit = report, passes, limit
        self.forwards: dict[int, Callable] = {}

    def forward(self, trace, manager) -> Callable:
        if trace.graph_id not in self.forwards:
            gm, _ = copy_graph_module(trace.original)
            passes = manager.graph_passes[:self.passes]
            budget = None
            if self.limit is not None and passes:
                name = passes[-1].name
                earlier = sum(t.applications(name) for t in self.report.traces if t.graph_id < trace.graph_id)
                budget = Budget(name, self.limit - earlier)
            token = REWRITE_BUDGET.set(budget)
            try:
                manager.run(gm, passes=passes)
            finally:
                REWRITE_BUDGET.reset(token)
            self.forwards[trace.graph_id] = gm.forward
        return self.forwards[trace.graph_id]


@dataclass
class BisectResult:
    pipeline: str
    tolerance: float
    full_drift: float
    pass_name: str | None = None
    application: int = 0              # 1-based, among the pass's applications over all graphs
    applications: int = 0
    rule: str = ""
    path: str = ""
    graph_id: int = -1
    replaces: str = ""
    probes: list[tuple[str, float]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.pass_name is not None

    def __str__(self) -> str:
        lines = [f"bisect: pipeline {self.pipeline}: output drift {self.full_drift:.3g} vs tolerance "
                 f"{self.tolerance:g}"]
        lines += [f"  probe {name}: drift {d:.3g}" for name, d in self.probes]
        if not self.found:
            lines.append("bisect: no drift out of tolerance: no culprit")
        else:
            lines.append(f"bisect: first drifting rewrite: {self.pass_name}:{self.rule} at {self.path or '<model>'} "
                         f"(graph {self.graph_id}, {self.replaces}; application {self.application} of "
                         f"{self.applications})")
        return "\n".join(lines)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return _first_tensor(out[0])


def bisect(model: nn.Module, pipeline: str = "default", example_inputs: dict | None = None,
           progress: Callable | None = None) -> BisectResult:
    """Optimize `model` for bisection, find the first drifting rewrite, restore the model; see the module doc."""
    from ..backends import module as backend
    from ..passes import Pipeline
    from .options import DebugOptions
    from .. import __version__

    inputs = example_inputs if example_inputs is not None else backend.default_inputs(model)
    report = backend.attach(model, Pipeline.parse(pipeline), __version__, DebugOptions(bisect=True))
    try:
        return _search(model, report, inputs, progress or (lambda text: None))
    finally:
        backend.detach(model)


def _search(model: nn.Module, report, inputs: dict, progress: Callable) -> BisectResult:
    manager_passes = [n for n in report.pass_names if n in report.graph_pass_names]

    def output(passes: int, limit: int | None = None) -> torch.Tensor:
        token = BISECT_PROBE.set(Probe(report, passes, limit))
        try:
            with torch.no_grad():
                return _first_tensor(model(**inputs)).detach()
        finally:
            BISECT_PROBE.reset(token)

    model.eval()
    reference = output(0)
    tol = tolerance(reference.dtype).max_rel
    result = BisectResult(report.pipeline, tol, 0.0)

    def drift(name: str, passes: int, limit: int | None = None) -> float:
        d = max_rel_error(output(passes, limit), reference)
        d = d if d == d else float("inf")
        result.probes.append((name, d))
        progress(f"{name}: drift {d:.3g}")
        return d

    result.full_drift = drift("all passes", len(manager_passes))
    if result.full_drift <= tol:
        return result
    k = _smallest(1, len(manager_passes), lambda k: drift(f"first {k} pass(es)", k) > tol)
    name = manager_passes[k - 1]
    sites = [(t, r) for t in report.traces for p, r in t.rewrites if p == name]
    if not sites:  # the drift appeared with a pass that rewrote nothing: not monotone, report the pass only
        result.pass_name, result.rule = name, "(no application)"
        return result
    m = _smallest(1, len(sites), lambda m: drift(f"{name} limited to {m} application(s)", k, m) > tol)
    trace, rewrite = sites[m - 1]
    result.pass_name, result.application, result.applications = name, m, len(sites)
    result.rule, result.path, result.graph_id = rewrite.rule, rewrite.path, trace.graph_id
    result.replaces = f"{trace.namer.ref(rewrite.root)} -> {trace.namer.ref(rewrite.replacement)}"
    return result


def _smallest(lo: int, hi: int, bad: Callable[[int], bool]) -> int:
    """The smallest n in [lo, hi] with bad(n), given bad(hi) (assumed monotone, as bisection must)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if bad(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
