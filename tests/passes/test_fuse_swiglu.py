"""fuse-swiglu: fires (SwiGLU, GeGLU erf/tanh, chunked gate_up), refuses with a reason, agrees with eager."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_agrees, optimize_with


class GatedMLP(nn.Module):
    def __init__(self, act, hidden=48, inter=97, fused_gate_up=False):
        super().__init__()
        self.act, self.fused = act, fused_gate_up
        self.gate_up = nn.Linear(hidden, 2 * inter, bias=False)
        self.gate, self.up = nn.Linear(hidden, inter, bias=False), nn.Linear(hidden, inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        if self.fused:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(up * self.act(gate))
        return self.down(self.act(self.gate(x)) * self.up(x))


ACTS = {"silu": F.silu, "gelu": F.gelu, "gelu-tanh": lambda x: F.gelu(x, approximate="tanh")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("fused_gate_up", [False, True])
def test_fires_and_agrees(act, dtype, fused_gate_up):
    module = GatedMLP(ACTS[act], fused_gate_up=fused_gate_up).to(dtype)
    x = torch.randn(2, 7, 48, dtype=dtype)
    opt, ref, report = optimize_with(module, "fuse-swiglu", x)
    assert report.fused("fuse-swiglu") == 1
    rule = "silu-times-up" if act == "silu" else "gelu-times-up"
    assert list(report.passes["fuse-swiglu"].matches) == [(rule, "")]
    assert_agrees(opt, ref, x)


class BroadcastGate(nn.Module):
    def forward(self, gate, up):
        return F.silu(gate) * up


def test_refuses_broadcasting():
    gate, up = torch.randn(4, 1), torch.randn(4, 9)
    opt, ref, report = optimize_with(BroadcastGate(), "fuse-swiglu", gate, up)
    assert report.fused("fuse-swiglu") == 0
    [(_, _, reason)] = report.refusals()
    assert "differ in shape" in reason
    assert_agrees(opt, ref, gate, up)


def test_geglu_can_be_disabled():
    module = GatedMLP(ACTS["gelu-tanh"])
    x = torch.randn(2, 3, 48)
    opt, ref, report = optimize_with(module, "fuse-swiglu{geglu=false}", x)
    assert report.fused("fuse-swiglu") == 0
    assert report.refusals() == [("gelu-times-up", "", "disabled by option geglu=false")]
    assert_agrees(opt, ref, x)
