"""Twins of a rewritten graph whose `slipstream::` op calls skip the dispatcher.

A custom op call crosses the dispatcher twice (its autograd kernel, then the backend kernel that calls the Python
implementation): ~150 us of host time per call on a 2-core CPU, ~0.5 ms measured on a GPU machine's host in
training. For a small model's step that is more than the fused computation itself. A graph our backend runs
eagerly does not need that path:
- no-grad twin (`torch.is_grad_enabled()` false, as in generate()): each op node calls the implementation the
  op's kernel would call.
- grad twin: each op node calls a `torch.autograd.Function` made of the op's own implementation, setup_context
  and backward (the functions the op registered), so autograd records one node with the op's formula.
Same functions, same results, same Triton/reference choice inside. In the grad twin, nodes with keyword
arguments and ops without an autograd formula keep the dispatcher path. The backward ops the formulas call skip
it too when nothing traces them (kernels/registry.py `call`). Graphs that dynamo or export trace never
meet a twin: twins exist only where our backend runs a graph.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.fx import GraphModule

from ..kernels.registry import IMPLEMENTATIONS, grad_function


def twin(gm: GraphModule, grad: bool = False) -> GraphModule | None:
    """A copy of `gm` whose op nodes skip the dispatcher (see the module docstring); None if no node can."""
    swap = grad_function if grad else IMPLEMENTATIONS.get
    targets = {n: swap(n.target) for n in gm.graph.nodes
               if n.op == "call_function" and n.target in IMPLEMENTATIONS and not (grad and n.kwargs)}
    if not any(targets.values()):
        return None
    graph = copy.deepcopy(gm.graph)
    for node, original in zip(graph.nodes, gm.graph.nodes):
        if targets.get(original) is not None:
            node.target = targets[original]
    return GraphModule(gm, graph)


def choose(gm: GraphModule) -> Callable:
    """The callable that runs `gm`: its no-grad twin when autograd is off, its grad twin when on (each falling back
    to the graph as rewritten when it has no twin)."""
    without_grad, with_grad = twin(gm), twin(gm, grad=True)
    if without_grad is None and with_grad is None:
        return gm.forward
    graded, plain = (with_grad or gm).forward, (without_grad or gm).forward

    def run(*args):
        return graded(*args) if torch.is_grad_enabled() else plain(*args)
    return run
