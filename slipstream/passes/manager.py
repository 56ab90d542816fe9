"""PassManager: runs a pipeline's module passes once over the model and its graph passes over each graph."""
from __future__ import annotations

import time
from typing import Any

from torch import nn
from torch.fx import GraphModule

from .base import PassStats
from .pipeline import Pipeline


class PassManager:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.passes = pipeline.build()
        self.module_passes = [p for p in self.passes if p.stage == "module"]
        self.graph_passes = [p for p in self.passes if p.stage != "module"]

    def run_modules(self, model: nn.Module) -> list[tuple[PassStats, list[str]]]:
        results = []
        for p in self.module_passes:
            start = time.perf_counter()
            stats, notes = p.run_module(model)
            stats.seconds = time.perf_counter() - start
            results.append((stats, notes))
        return results

    def run(self, gm: GraphModule, observer: Any = None, passes: list | None = None) -> list[PassStats]:
        """Run the graph passes (or the first few, `passes`) over `gm`. An `observer` (debug/trace.py) sees the
        graph before and after each pass: that is where the graph diff and the dump come from."""
        stats = []
        for p in self.graph_passes if passes is None else passes:
            if observer is not None:
                observer.before_pass(p, gm.graph)
            start = time.perf_counter()
            stats.append(p.run(gm.graph))
            stats[-1].seconds = time.perf_counter() - start  # also for passes that override run()
            if observer is not None:
                observer.after_pass(p, gm.graph, stats[-1])
        if any(s.changed for s in stats):
            gm.graph.lint()
            gm.recompile()
        return stats
