"""PassManager: runs a pipeline's module passes once over the model and its graph passes over each graph."""
from __future__ import annotations

import time

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

    def run(self, gm: GraphModule) -> list[PassStats]:
        stats = [p.run(gm.graph) for p in self.graph_passes]
        if any(s.changed for s in stats):
            gm.graph.lint()
            gm.recompile()
        return stats
