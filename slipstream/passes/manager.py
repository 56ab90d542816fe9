"""PassManager: runs a pipeline's passes over one graph and returns each pass's stats."""
from __future__ import annotations

from torch.fx import GraphModule

from .base import PassStats
from .pipeline import Pipeline


class PassManager:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.passes = pipeline.build()

    def run(self, gm: GraphModule) -> list[PassStats]:
        stats = [p.run(gm.graph) for p in self.passes]
        if any(s.changed for s in stats):
            gm.graph.lint()
            gm.recompile()
        return stats
