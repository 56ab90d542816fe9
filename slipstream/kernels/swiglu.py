"""`slipstream::swiglu` / `slipstream::geglu` (gated MLP activations) and their backward ops.

Forward mimics eager `act(gate) * up` rounding: the activation is computed in fp32 and rounded to the input
dtype, then the product is rounded. The backward mimics eager autograd's rounding the same way: dup =
grad * act(gate) and da = grad * up are rounded, then the activation's derivative is applied in fp32.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from slipstream.kernels.dispatch import as_dtype, select_triton
from slipstream.kernels.registry import define_op

APPROXIMATIONS = ("none", "tanh")


def _check(gate: Tensor, up: Tensor, approximate: str = "none") -> None:
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"gate/up must match: {tuple(gate.shape)} {gate.dtype} vs {tuple(up.shape)} {up.dtype}"
        )
    if not gate.is_floating_point() or gate.dim() == 0:
        raise ValueError(f"gate/up must be floating tensors with at least one dim, got {gate.dtype} {gate.dim()}-D")
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"geglu: approximate must be one of {APPROXIMATIONS}, got {approximate!r}")


def _activation(gate: Tensor, approximate: Optional[str]) -> Tensor:
    """Activation in fp32, rounded to gate's dtype (what F.silu / F.gelu do on a low-precision tensor)."""
    g = as_dtype(gate, torch.float32)
    a = F.silu(g) if approximate is None else F.gelu(g, approximate=approximate)
    return as_dtype(a, gate.dtype)


def gated_reference(gate: Tensor, up: Tensor, approximate: Optional[str] = None) -> Tensor:
    """swiglu (approximate=None) or geglu in PyTorch; output is contiguous like the kernels'."""
    return _activation(gate, approximate).mul_(up).contiguous()  # the activation is a fresh tensor


def gated_backward_reference(
    grad: Tensor, gate: Tensor, up: Tensor, approximate: Optional[str] = None
) -> tuple[Tensor, Tensor]:
    dup = grad * _activation(gate, approximate)
    da = grad * up
    if approximate is None:
        dgate = torch.ops.aten.silu_backward(da, gate)
    else:
        dgate = torch.ops.aten.gelu_backward(da, gate, approximate=approximate)
    return dgate.contiguous(), dup.contiguous()


def _forward(gate: Tensor, up: Tensor, approximate: Optional[str]) -> Tensor:
    _check(gate, up, approximate or "none")
    if select_triton(gate):
        from slipstream.kernels.triton_swiglu import gated_forward

        return gated_forward(gate, up, approximate)
    return gated_reference(gate, up, approximate)


def _backward_impl(grad: Tensor, gate: Tensor, up: Tensor, approximate: Optional[str]) -> tuple[Tensor, Tensor]:
    _check(gate, up, approximate or "none")
    if grad.shape != gate.shape or grad.dtype != gate.dtype:
        raise ValueError(f"grad {tuple(grad.shape)} {grad.dtype} must match gate {tuple(gate.shape)} {gate.dtype}")
    if select_triton(gate):
        from slipstream.kernels.triton_swiglu import gated_backward

        return gated_backward(grad, gate, up, approximate)
    return gated_backward_reference(grad, gate, up, approximate)


def _swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return _forward(gate, up, None)


def _swiglu_fake(gate: Tensor, up: Tensor) -> Tensor:
    _check(gate, up)
    return gate.new_empty(gate.shape)


def _swiglu_backward(grad: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    return _backward_impl(grad, gate, up, None)


def _swiglu_backward_fake(grad: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    _check(gate, up)
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape)


def _geglu(gate: Tensor, up: Tensor, approximate: str) -> Tensor:
    return _forward(gate, up, approximate)


def _geglu_fake(gate: Tensor, up: Tensor, approximate: str) -> Tensor:
    _check(gate, up, approximate)
    return gate.new_empty(gate.shape)


def _geglu_backward(grad: Tensor, gate: Tensor, up: Tensor, approximate: str) -> tuple[Tensor, Tensor]:
    return _backward_impl(grad, gate, up, approximate)


def _geglu_backward_fake(grad: Tensor, gate: Tensor, up: Tensor, approximate: str) -> tuple[Tensor, Tensor]:
    _check(gate, up, approximate)
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape)


def _setup_context(ctx, inputs, output) -> None:
    gate, up = inputs[:2]
    ctx.save_for_backward(gate, up)
    ctx.approximate = inputs[2] if len(inputs) > 2 else None


def _backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], ...]:
    gate, up = ctx.saved_tensors
    if ctx.approximate is None:
        return swiglu_backward_op(grad, gate, up)
    dgate, dup = geglu_backward_op(grad, gate, up, ctx.approximate)
    return dgate, dup, None


swiglu_backward_op = define_op("swiglu_backward", _swiglu_backward, _swiglu_backward_fake)
geglu_backward_op = define_op("geglu_backward", _geglu_backward, _geglu_backward_fake)
swiglu_op = define_op("swiglu", _swiglu, _swiglu_fake, _backward, _setup_context)
geglu_op = define_op("geglu", _geglu, _geglu_fake, _backward, _setup_context)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up."""
    return swiglu_op(gate, up)


def geglu(gate: Tensor, up: Tensor, approximate: str = "none") -> Tensor:
    """gelu(gate, approximate) * up, with approximate "none" (erf) or "tanh"."""
    return geglu_op(gate, up, approximate)
