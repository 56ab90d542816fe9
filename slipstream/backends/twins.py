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
it too when nothing observes them (kernels/registry.py `unobserved`). Graphs that dynamo or export trace never
meet a twin: twins exist only where our backend runs a graph.
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
    None for an op without a formula.

    autograd.Function only tracks tensors passed as arguments, so tensor lists (`lora_linear`'s adapters) travel
    flattened: the op's arguments come first, in order, each tensor list replaced by its length, then the lists'
    tensors. An argument keeps its index, so the formula's `ctx.needs_input_grad[i]` means what it means for the op,
    and its gradient lists are flattened back the same way."""
    if op not in AUTOGRAD:
        return None
    impl, (setup_context, backward) = IMPLEMENTATIONS[op], AUTOGRAD[op]
    tensor_list = torch.ListType.ofTensors()
    lists = [i for i, a in enumerate(op._schema.arguments) if a.type.isSubtypeOf(tensor_list)]
    n_args = len(op._schema.arguments)

    def unflatten(flat: tuple) -> tuple:
        args, tail = list(flat[:n_args]), flat[n_args:]
        for i in lists:
            args[i], tail = list(tail[:args[i]]), tail[args[i]:]
        return tuple(args)

    def forward(ctx, *flat):
        args = unflatten(flat)
        out = impl(*args)
        setup_context(ctx, args, out)
        return out

    def backward_flat(ctx, *grads):
        op_grads = backward(ctx, *grads)
        tail = [g for i in lists for g in op_grads[i]]
        # a length, or a non-tensor argument the formula answered with an empty list: no gradient
        return (*(g if isinstance(g, torch.Tensor) else None for g in op_grads), *tail)

    name = f"{op._schema.name.split('::')[-1]}_grad_twin"
    # named after the op, so autograd graphs and profiles read `rms_norm_grad_twinBackward`
    function = type(name, (torch.autograd.Function,), {
        "__module__": __name__, "forward": staticmethod(forward),
        "backward": staticmethod(backward_flat if lists else backward)})

    def call(*args):  # a plain function: FX's code generation cannot name `apply` of a local class
        if not lists:
            return function.apply(*args)
        flat = list(args)
        for i in lists:
            flat[i] = len(args[i])
        return function.apply(*flat, *(t for i in lists for t in args[i]))
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
