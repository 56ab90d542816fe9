"""Twins of a rewritten graph whose `slipstream::` op calls skip the dispatcher.

A custom op call crosses the dispatcher twice (its autograd kernel, then the backend kernel that calls the Python
implementation): ~150 us of host time per call on a 2-core CPU, ~0.5 ms measured on a GPU machine's host in
training. For a small model's step that is more than the fused computation itself. A graph our backend runs
eagerly does not need that path:
- no-grad twin (`torch.is_grad_enabled()` false, as in generate()): each op node calls the implementation the
  op's kernel would call.
- grad twin: each op node calls a `torch.autograd.Function` made of the op's own implementation, setup_context
  and backward (the functions the op registered), so autograd records one node with the op's formula.
Same functions, same results, same Triton/reference choice inside. In the grad twin, nodes it cannot express
exactly keep the dispatcher path: keyword arguments, ops without an autograd formula, and ops taking tensor lists
(autograd.Function does not track tensors inside lists: `slipstream::lora_linear`). The backward ops the formulas
call still cross the dispatcher once. Graphs that dynamo or export trace never meet a twin: twins exist only where
our backend runs a graph.
"""
from __future__ import annotations

import copy
import functools
from typing import Callable

import torch
from torch.fx import GraphModule

from ..kernels.registry import AUTOGRAD, IMPLEMENTATIONS


def twin(gm: GraphModule, grad: bool = False) -> GraphModule | None:
    """A copy of `gm` whose op nodes skip the dispatcher (see the module docstring); None if no node can."""
    swap = _grad_function if grad else IMPLEMENTATIONS.get
    targets = {n: swap(n.target) for n in gm.graph.nodes
               if n.op == "call_function" and n.target in IMPLEMENTATIONS and not (grad and n.kwargs)}
    if not any(targets.values()):
        return None
    graph = copy.deepcopy(gm.graph)
    for node, original in zip(graph.nodes, gm.graph.nodes):
        if targets.get(original) is not None:
            node.target = targets[original]
    return GraphModule(gm, graph)


@functools.cache
def _grad_function(op) -> Callable | None:
    """A function running `op` as an autograd.Function made of its implementation and registered autograd formula;
    None where that would not be the same thing (see the module docstring)."""
    tensor_list = torch.ListType.ofTensors()
    if op not in AUTOGRAD or any(a.type.isSubtypeOf(tensor_list) for a in op._schema.arguments):
        return None
    impl, (setup_context, backward) = IMPLEMENTATIONS[op], AUTOGRAD[op]
    name = f"{op._schema.name.split('::')[-1]}_grad_twin"

    def forward(ctx, *args):
        out = impl(*args)
        setup_context(ctx, args, out)
        return out

    # named after the op, so autograd graphs and profiles read `rms_norm_grad_twinBackward`
    function = type(name, (torch.autograd.Function,), {
        "__module__": __name__, "forward": staticmethod(forward), "backward": staticmethod(backward)})

    def call(*args):  # a plain function: FX's code generation cannot name `apply` of a local class
        return function.apply(*args)
    call.__name__ = call.__qualname__ = name
    return call


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
