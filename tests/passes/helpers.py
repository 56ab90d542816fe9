"""Run one pass over a small module and compare it with the module's eager output, forward and backward."""
from __future__ import annotations

import copy
from unittest import mock

import torch
from torch import nn

import slipstream
from slipstream.frontend import capture
from slipstream.debug.tolerance import max_rel_error, tolerance


def optimize_with(module: nn.Module, pipeline: str, *inputs: torch.Tensor):
    """(optimized copy, eager copy, report) after one call on `inputs` (which captures the graph). Captured with
    every dimension symbolic (dynamo's duck-sized dynamic shapes, as `torch.compile(dynamic=True)` does), so the
    passes meet size nodes and symbolic arithmetic throughout, the hardest form a graph takes; a model's first
    capture is static, and the module-backend tests cover that form."""
    reference = copy.deepcopy(module)
    opt = slipstream.optimize(copy.deepcopy(module), pipeline=pipeline, warmup=False)
    with mock.patch.dict(capture._CAPTURE_CONFIG, assume_static_by_default=False):
        opt(*inputs)
    return opt, reference, slipstream.report(opt)


def assert_agrees(opt: nn.Module, reference: nn.Module, *inputs: torch.Tensor) -> None:
    """Forward and backward (inputs and parameters) match within the dtype's tolerance."""
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    ys = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out, want = opt(*xs), reference(*ys)
    out, want = (out if isinstance(out, tuple) else (out,)), (want if isinstance(want, tuple) else (want,))
    tol = tolerance(want[0].dtype)
    for o, w in zip(out, want):
        assert o.dtype == w.dtype and o.shape == w.shape
        assert max_rel_error(o, w) <= tol.max_rel
    gs = [torch.randn(w.shape).to(w.dtype) for w in want]  # a fresh random upstream grad per output
    sum((o * g).float().sum() for o, g in zip(out, gs)).backward()
    sum((w * g).float().sum() for w, g in zip(want, gs)).backward()
    for a, b in zip(xs + list(opt.parameters()), ys + list(reference.parameters())):
        if b.grad is not None:
            assert a.grad is not None and max_rel_error(a.grad, b.grad) <= tol.max_rel
