"""Capture attributes every rewritten site to its module, also in graphs dynamo traces below a graph break: there
it compiles the submodule's frame (or a resume function) on its own, with node paths relative to that frame."""
from __future__ import annotations

import copy

import torch
from torch import nn

import slipstream


class Norm(nn.Module):
    """Llama's RMSNorm."""
    def __init__(self, n: int):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.randn(n)), 1e-6

    def forward(self, x):
        dtype, x = x.dtype, x.to(torch.float32)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)


class Block(nn.Module):
    """A submodule whose forward breaks dynamo's graph after its norm, and a second norm after the break."""
    def __init__(self, n: int):
        super().__init__()
        self.proj, self.norm, self.after = nn.Linear(n, n), Norm(n), Norm(n)

    def forward(self, x):
        x = self.norm(self.proj(x))
        torch._dynamo.graph_break()
        return self.after(x) + 1


class Layer(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.block, self.out = Block(n), Norm(n)

    def forward(self, x):
        return self.out(self.block(x))


class Stack(nn.Module):
    def __init__(self, n: int = 16):
        super().__init__()
        self.layers = nn.ModuleList(Layer(n) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_sites_below_a_graph_break_keep_their_module_paths():
    model = Stack()
    reference = copy.deepcopy(model)
    opt = slipstream.optimize(model, pipeline="fuse-rms-norm", warmup=False)
    x = torch.randn(2, 5, 16)
    assert torch.equal(opt(x), reference(x))
    report = slipstream.report(opt)
    assert report.graphs > len(opt.layers)  # the break split each layer's capture
    expected = [f"layers.{i}.{site}" for i in range(2) for site in ("block.after", "block.norm", "out")]
    assert report.passes["fuse-rms-norm"].fused_paths() == expected
    assert report.fused("fuse-rms-norm") == 6


def test_input_source_reads_the_name_as_a_property_or_a_method():
    """torch 2.9's dynamo has `Source.name()` a method; newer releases a property. Paths below graph breaks and the
    diff's input names depend on reading both (on 2.9 the test above failed when only the property was read)."""
    from types import SimpleNamespace

    from slipstream.frontend.capture import input_source

    text = "L['self']._modules['norm']._parameters['weight']"

    class MethodSource:
        def name(self):
            return text

    for source in (SimpleNamespace(name=text), MethodSource()):
        node = SimpleNamespace(meta={"grapharg": SimpleNamespace(source=source)})
        assert input_source(node) == text
    assert input_source(SimpleNamespace(meta={})) is None


def test_tracing_runs_with_the_garbage_collector_paused(monkeypatch):
    """Capture pauses the cyclic GC while dynamo traces (gc_pause.py) and turns it back on after."""
    import gc

    from slipstream.frontend import capture

    seen, annotate = [], capture.annotate
    monkeypatch.setattr(capture, "annotate", lambda *args: (seen.append(gc.isenabled()), annotate(*args))[1])
    opt = slipstream.optimize(Stack(), pipeline="fuse-rms-norm", warmup=False)
    opt(torch.randn(2, 5, 16))
    assert len(seen) == slipstream.report(opt).graphs > 0 and not any(seen)
    assert gc.isenabled()
