"""One place that turns (impl, fake, autograd) into a `slipstream::` custom op.

Every canonical op is a pair: the forward op, whose autograd formula calls a backward op, and the backward op
itself (also a custom op, so its math runs in Triton on GPU and shows up as one node in traced graphs).
"""
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
    the op, or for a backward op (no `backward` of its own) the op behind `_DirectWhenUnobserved`."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
    IMPLEMENTATIONS[getattr(torch.ops.slipstream, name).default] = impl
    op.register_fake(fake)
    if backward is None:  # a backward op, called by autograd formulas
        return _DirectWhenUnobserved(op, impl)
    op.register_autograd(backward, setup_context=setup_context)
    AUTOGRAD[getattr(torch.ops.slipstream, name).default] = (setup_context, backward)
    return op


class _DirectWhenUnobserved:
    """A backward op as its formulas call it: the implementation itself when `unobserved` (an eager backward runs
    with gradients off on plain tensors), the op when something watches (tracing, fake tensors, double backward)."""

    def __init__(self, op: "torch.library.CustomOpDef", impl: Callable):
        self.op, self.impl = op, impl

    def __call__(self, *args):
        if unobserved(*(a for a in args if isinstance(a, torch.Tensor))):
            return self.impl(*args)
        return self.op(*args)


def unobserved(*tensors: torch.Tensor) -> bool:
    """True when calling an op's implementation directly is the same as calling the op: no gradient is wanted,
    nothing traces (dynamo, export), and the inputs are plain tensors or parameters (no fake or subclass
    tensors). Then the dispatcher's two crossings (~150 us of host time per call on a CPU) buy nothing."""
    return (not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and all(type(t) in _PLAIN for t in tensors))


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # exact types: fake, functional and other subclass tensors are not
