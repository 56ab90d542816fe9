"""One place that turns (impl, fake, autograd) into a `slipstream::` custom op.

Every canonical op is a pair: the forward op, whose autograd formula calls a backward op, and the backward op
itself (also a custom op, so its math runs in Triton on GPU and shows up as one node in traced graphs).

Eager callers can skip the dispatcher's two crossings per call (host time that exceeds a small op's math) with
`call`: the implementation itself when no gradient is wanted, an autograd.Function made of the op's own
implementation and formula when one may be (`grad_function`). Traced calls (dynamo, export, fake tensors) keep
the op.
"""
import functools
from collections.abc import Callable
from typing import Optional

import torch

NAMESPACE = "slipstream"

# op overload -> its Python implementation (what the op's CPU/CUDA kernel calls), and -> (setup_context, backward)
# of ops with an autograd formula: for callers that skip the dispatcher (backends/twins.py)
IMPLEMENTATIONS: dict = {}
AUTOGRAD: dict = {}


def define_op(
    name: str,
    impl: Callable,
    fake: Callable,
    backward: Optional[Callable] = None,
    setup_context: Optional[Callable] = None,
) -> Callable:
    """Register `slipstream::<name>` (schema inferred from `impl`'s annotations; ops never mutate inputs) and return
    the op; a backward op (no `backward` of its own) is returned as `call` on it, which is how formulas run it."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
    overload = getattr(torch.ops.slipstream, name).default
    IMPLEMENTATIONS[overload] = impl
    op.register_fake(fake)
    if backward is None:  # a backward op: an eager backward runs it with gradients off, so `call` skips the dispatcher
        return functools.partial(call, overload)
    op.register_autograd(backward, setup_context=setup_context)
    AUTOGRAD[overload] = (setup_context, backward)
    return op


def call(op, *args):
    """`op(*args)` (an op overload) without the dispatcher's two crossings (~150 us of host time per call on a CPU)
    where that is the same thing: nothing traces (`untraced`) and then the implementation itself when no gradient is
    wanted, else `grad_function(op)` (the op's own formula). Traced calls and ops without a formula keep the op."""
    if untraced(*(a for a in args if isinstance(a, torch.Tensor))):
        if not torch.is_grad_enabled():
            return IMPLEMENTATIONS[op](*args)
        function = grad_function(op)
        if function is not None:
            return function(*args)
    return op(*args)


def untraced(*tensors: torch.Tensor) -> bool:
    """Nothing traces (dynamo, export) and the inputs are plain tensors or parameters: no fake, functional or other
    subclass tensors (AOT autograd, make_fx, DTensor)."""
    return not torch.compiler.is_compiling() and all(type(t) in _PLAIN for t in tensors)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


@functools.cache
def grad_function(op) -> Callable | None:
    """A function running `op` as an autograd.Function made of its implementation and registered autograd formula;
    None for an op without a formula.

    autograd.Function only tracks tensors passed as arguments, so tensor lists (`lora_linear`'s adapters) travel
    flattened: the op's arguments come first, in order, each tensor list replaced by its length, then the lists'
    tensors. An argument keeps its index, so the formula's `ctx.needs_input_grad[i]` means what it means for the op,
    and its gradient lists are flattened back the same way. Arguments left out take the schema's defaults, as the
    op's own setup_context sees them."""
    if op not in AUTOGRAD:
        return None
    impl, (setup_context, backward) = IMPLEMENTATIONS[op], AUTOGRAD[op]
    tensor_list = torch.ListType.ofTensors()
    arguments = op._schema.arguments
    lists = [i for i, a in enumerate(arguments) if a.type.isSubtypeOf(tensor_list)]
    n_args = len(arguments)
    defaults = [a.default_value if a.has_default_value() else None for a in arguments]

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

    def run(*args):  # a plain function: FX's code generation cannot name `apply` of a local class
        args = (*args, *defaults[len(args):])
        if not lists:
            return function.apply(*args)
        flat = list(args)
        for i in lists:
            flat[i] = len(args[i])
        return function.apply(*flat, *(t for i in lists for t in args[i]))
    run.__name__ = run.__qualname__ = name
    return run
