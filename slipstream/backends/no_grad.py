"""A no-grad twin of a rewritten graph: its `slipstream::` op calls go straight to the ops' implementations.

A custom op call crosses the dispatcher twice (its autograd wrapper, then the backend kernel), about 100 us of
Python on a CPU per call; for a small model's decode step (batch 1, one token) that is more than the fused
computation itself. When no gradient is wanted (`torch.is_grad_enabled()` is false, as in generate()), the
autograd wrapper has nothing to do, so the twin calls the same implementation function the op's kernel would
call: identical results, same Triton/reference selection inside. Graphs with grad enabled run unchanged.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.fx import GraphModule

from ..kernels.registry import IMPLEMENTATIONS


def twin(gm: GraphModule) -> GraphModule | None:
    """A copy of `gm` calling op implementations directly; None if it calls no slipstream op."""
    if not any(n.op == "call_function" and n.target in IMPLEMENTATIONS for n in gm.graph.nodes):
        return None
    graph = copy.deepcopy(gm.graph)
    for node in graph.nodes:
        if node.op == "call_function" and node.target in IMPLEMENTATIONS:
            node.target = IMPLEMENTATIONS[node.target]
    return GraphModule(gm, graph)


def choose(gm: GraphModule) -> Callable:
    """The callable that runs `gm`: its no-grad twin when autograd is off, else the graph as rewritten."""
    fast = twin(gm)
    if fast is None:
        return gm.forward
    slow, quick = gm.forward, fast.forward

    def run(*args):
        return slow(*args) if torch.is_grad_enabled() else quick(*args)
    return run
