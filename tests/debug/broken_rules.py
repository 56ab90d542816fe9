"""A deliberately wrong rewrite for testing the debugging tools: fuse-rms-norm whose `weight-times-cast` rule is
replaced by `dropped-eps`, an RMSNorm replacement that forgets eps. Installed with monkeypatch, never shipped."""
from __future__ import annotations

import torch
from torch.fx import Graph

from slipstream.passes.base import Rule
from slipstream.passes.fuse_rms_norm import FuseRmsNorm
from slipstream.passes.pattern import Match


def _replace_without_eps(graph: Graph, m: Match):
    return graph.call_function(torch.ops.slipstream.rms_norm.default, (m["x"], m["weight"], 0.0, 0.0, True))


class FuseRmsNormDroppingEps(FuseRmsNorm):
    def rules(self) -> list[Rule]:
        return [Rule("dropped-eps", r.pattern, _replace_without_eps, r.check) if r.name == "weight-times-cast" else r
                for r in super().rules()]


def install(monkeypatch) -> None:
    from slipstream.passes import registry
    monkeypatch.setitem(registry.PASSES, "fuse-rms-norm", FuseRmsNormDroppingEps)
