"""`slipstream::rms_norm` and its backward op.

Forward mimics Hugging Face eager numerics, including where it rounds:
- cast_first=True (Llama, Qwen, Mistral, Phi-3): `(weight + offset) * n.to(x.dtype)`; output dtype is
  promote_types(x.dtype, weight.dtype).
- cast_first=False (Gemma): `(n * (weight.float() + offset)).to(x.dtype)`; output dtype is x.dtype.
where n = x.float() * rsqrt(mean(x.float()**2, -1) + eps). The backward is fp32 math that ignores the forward's
intermediate rounding (straight-through) and recomputes rstd from x instead of saving it.
"""
from typing import Optional

import torch
from torch import Tensor

from slipstream.kernels.dispatch import as_dtype, select_triton
from slipstream.kernels.registry import define_op


def _check(x: Tensor, weight: Tensor) -> None:
    if weight.dim() != 1 or x.dim() == 0 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} must be [N] for x {tuple(x.shape)}")
    if not (x.is_floating_point() and weight.is_floating_point()):
        raise ValueError(f"rms_norm: expected floating tensors, got {x.dtype} and {weight.dtype}")


def out_dtype(x: Tensor, weight: Tensor, cast_first: bool) -> torch.dtype:
    return torch.promote_types(x.dtype, weight.dtype) if cast_first else x.dtype


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float, offset: float, cast_first: bool) -> Tensor:
    """The PyTorch implementation: the HF modules' ops and roundings, minus their no-op casts and with temporaries
    reused in place (same values; on a CPU decode step each op call costs more than its math)."""
    xf = _fp32(x)
    n = xf * xf.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    if cast_first:
        n = as_dtype(n, x.dtype)
        w = weight + offset if offset else weight  # no `+ 0.0` op when there is no offset
        return n.mul_(w) if w.dtype == n.dtype else w * n  # one rounded product either way
    return n.mul_(_fp32(weight) + offset).to(x.dtype)


def rms_norm_backward_reference(
    grad: Tensor, x: Tensor, weight: Tensor, eps: float, offset: float, compute_weight_grad: bool
) -> tuple[Tensor, Tensor]:
    xf, gf, wf = _fp32(x), _fp32(grad), _fp32(weight)
    rstd = xf.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    n = xf * rstd
    gw = gf * (wf + offset if offset else wf)
    grad_x = (gw - n * (gw * n).mean(-1, keepdim=True)).mul_(rstd)
    if compute_weight_grad:
        grad_w = (gf * n).reshape(-1, x.shape[-1]).sum(0)
        grad_w = as_dtype(grad_w, weight.dtype)
    else:
        grad_w = weight.new_empty(0)
    return as_dtype(grad_x, x.dtype).contiguous(), grad_w


def _fp32(t: Tensor) -> Tensor:
    return as_dtype(t, torch.float32)


def _rms_norm(x: Tensor, weight: Tensor, eps: float, offset: float, cast_first: bool) -> Tensor:
    _check(x, weight)
    if select_triton(x, weight):
        from slipstream.kernels.triton_rms_norm import rms_norm_forward

        return rms_norm_forward(x, weight, eps, offset, cast_first, out_dtype(x, weight, cast_first))
    return rms_norm_reference(x.contiguous(), weight, eps, offset, cast_first)


def _rms_norm_fake(x: Tensor, weight: Tensor, eps: float, offset: float, cast_first: bool) -> Tensor:
    _check(x, weight)
    return x.new_empty(x.shape, dtype=out_dtype(x, weight, cast_first))


def _rms_norm_backward(
    grad: Tensor, x: Tensor, weight: Tensor, eps: float, offset: float, cast_first: bool,
    compute_weight_grad: bool = True,
) -> tuple[Tensor, Tensor]:
    # cast_first only changes the forward's rounding, which the backward ignores; it stays in the schema so the
    # backward op carries the same options as the forward in traced graphs.
    _check(x, weight)
    if select_triton(grad, x, weight):
        from slipstream.kernels.triton_rms_norm import rms_norm_backward

        return rms_norm_backward(grad, x, weight, eps, offset, compute_weight_grad)
    return rms_norm_backward_reference(grad, x, weight, eps, offset, compute_weight_grad)


def _rms_norm_backward_fake(
    grad: Tensor, x: Tensor, weight: Tensor, eps: float, offset: float, cast_first: bool,
    compute_weight_grad: bool = True,
) -> tuple[Tensor, Tensor]:
    grad_w = weight.new_empty(weight.shape if compute_weight_grad else (0,))
    return x.new_empty(x.shape), grad_w


def _setup_context(ctx, inputs, output) -> None:
    x, weight, eps, offset, cast_first = inputs
    ctx.save_for_backward(x, weight)
    ctx.options = (eps, offset, cast_first)


def _backward(ctx, grad: Tensor) -> tuple[Optional[Tensor], ...]:
    x, weight = ctx.saved_tensors
    # Frozen norms (peft) skip the weight-grad reduction entirely.
    need_w = ctx.needs_input_grad[1]
    grad_x, grad_w = rms_norm_backward_op(grad, x, weight, *ctx.options, need_w)
    return grad_x, (grad_w if need_w else None), None, None, None


rms_norm_backward_op = define_op("rms_norm_backward", _rms_norm_backward, _rms_norm_backward_fake)
rms_norm_op = define_op("rms_norm", _rms_norm, _rms_norm_fake, _backward, _setup_context)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, offset: float = 0.0, cast_first: bool = True) -> Tensor:
    """RMSNorm over the last dim; see the module docstring for `offset` (Gemma: 1.0) and `cast_first`."""
    return rms_norm_op(x, weight, float(eps), float(offset), bool(cast_first))
