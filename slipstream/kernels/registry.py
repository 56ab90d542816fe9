"""One place that turns (impl, fake, autograd) into a `slipstream::` custom op.

Every canonical op is a pair: the forward op, whose autograd formula calls a backward op, and the backward op
itself (also a custom op, so its math runs in Triton on GPU and shows up as one node in traced graphs).
"""
from collections.abc import Callable
from typing import Optional

import torch

NAMESPACE = "slipstream"

# op overload -> its Python implementation (what the op's CPU/CUDA kernel calls), for callers that may skip the
# dispatcher's autograd wrapper because no gradient is wanted (backends/no_grad.py)
IMPLEMENTATIONS: dict = {}


def define_op(
    name: str,
    impl: Callable,
    fake: Callable,
    backward: Optional[Callable] = None,
    setup_context: Optional[Callable] = None,
) -> "torch.library.CustomOpDef":
    """Register `slipstream::<name>` (schema inferred from `impl`'s annotations; ops never mutate inputs)."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=())
    IMPLEMENTATIONS[getattr(torch.ops.slipstream, name).default] = impl
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return op
