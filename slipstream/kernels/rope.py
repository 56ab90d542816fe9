"""`slipstream::rope` (rotate-half rotary embedding of q and k) and its backward op.

q [B, Hq, S, D] and k [B, Hk, S, D] (any strides), cos/sin [B or 1, S, R] with R even, R <= D: the first R dims
of each head are rotated, dims R..D pass through (partial rotary). Outputs are contiguous [B, H, S, D].
Rounding mimics HF's `q * cos + rotate_half(q) * sin` (each product rounded, then the sum); the backward is the
transposed rotation with eager autograd's rounding. cos/sin get no gradient.
"""
from typing import Optional

import torch
from torch import Tensor

from slipstream.kernels.dispatch import select_triton
from slipstream.kernels.registry import define_op


def _check(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"rope: q {tuple(q.shape)} and k {tuple(k.shape)} must be [B, H, S, D] with equal B, S, D")
    b, _, s, d = q.shape
    if cos.dim() != 3 or cos.shape != sin.shape or cos.shape[0] not in (1, b) or cos.shape[1] != s:
        raise ValueError(f"rope: cos {tuple(cos.shape)} / sin {tuple(sin.shape)} must be [{b} or 1, {s}, R]")
    r = cos.shape[2]
    if r % 2 or not 0 < r <= d:
        raise ValueError(f"rope: rotary dim R={r} must be even and in (0, D={d}]")
    dtypes = {q.dtype, k.dtype, cos.dtype, sin.dtype}
    if len(dtypes) != 1:
        raise ValueError(
            f"rope: q, k, cos, sin must share a dtype (cast cos/sin to q's dtype as HF does), got "
            f"{q.dtype}, {k.dtype}, {cos.dtype}, {sin.dtype}"
        )


def _rotate_reference(x: Tensor, c: Tensor, s: Tensor, backward: bool) -> Tensor:
    """c, s: cos/sin already [B or 1, 1, S, R]. Few view ops: on CPU decode each costs as much as the math."""
    r = c.shape[-1]
    h = r // 2
    full = r == x.shape[-1]
    x_rot = x if full else x[..., :r]
    if not backward:
        y = x_rot * c + torch.cat((-x_rot[..., h:], x_rot[..., :h]), -1) * s  # HF: q * cos + rotate_half(q) * sin
    else:
        gs = x_rot * s
        y = x_rot * c + torch.cat((gs[..., h:], -gs[..., :h]), -1)  # eager autograd: rotate_half's transpose
    if full:  # no concatenation (a copy per call)
        return y.contiguous()
    return torch.cat((y, x[..., r:]), -1).contiguous()


def rope_reference(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backward: bool = False) -> tuple[Tensor, Tensor]:
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rotate_reference(q, c, s, backward), _rotate_reference(k, c, s, backward)


def _apply(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backward: bool) -> tuple[Tensor, Tensor]:
    _check(q, k, cos, sin)
    if select_triton(q):
        from slipstream.kernels.triton_rope import rope_apply

        return rope_apply(q, k, cos, sin, backward)
    return rope_reference(q, k, cos, sin, backward)


def _rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    return _apply(q, k, cos, sin, False)


def _rope_backward(grad_q: Tensor, grad_k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    return _apply(grad_q, grad_k, cos, sin, True)


def _rope_fake(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    _check(q, k, cos, sin)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output) -> None:
    _, _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, grad_q: Tensor, grad_k: Tensor) -> tuple[Optional[Tensor], ...]:
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(
            "slipstream::rope does not compute gradients for cos/sin; pass them detached (HF builds them from a "
            "non-trainable inv_freq buffer) or keep this rotary embedding out of the rewrite."
        )
    cos, sin = ctx.saved_tensors
    grad_q, grad_k = rope_backward_op(grad_q, grad_k, cos, sin)
    return grad_q, grad_k, None, None


rope_backward_op = define_op("rope_backward", _rope_backward, _rope_fake)
rope_op = define_op("rope", _rope, _rope_fake, _backward, _setup_context)


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary embedding of q [B, Hq, S, D] and k [B, Hk, S, D] with cos/sin [B or 1, S, R]."""
    return rope_op(q, k, cos, sin)
