"""`slipstream::rope` (rotary embedding of q and k) and its backward op.

q [B, Hq, S, D] and k [B, Hk, S, D] (any strides), cos/sin [B or 1, S, R] with R even, R <= D: the first R dims
of each head are rotated, dims R..D pass through (partial rotary). Outputs are contiguous [B, H, S, D].
Two layouts of the rotated pairs: halves (Llama's `rotate_half`: dim i pairs with i + R/2) and, with
`interleaved`, neighbours (GPT-J style, GLM, Helium, Cohere: dim 2i pairs with 2i + 1,
`stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`). cos/sin are read per dim in both.
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


def _rotated(x: Tensor, interleaved: bool, transposed: bool) -> Tensor:
    """rotate_half(x) (pairs i, i + R/2) or its interleaved form (pairs 2i, 2i + 1); `transposed`: the rotation's
    transpose, which the backward applies."""
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]
        pair = (second, -first) if transposed else (-second, first)
        return torch.stack(pair, -1).flatten(-2)
    h = x.shape[-1] // 2
    return torch.cat((x[..., h:], -x[..., :h]) if transposed else (-x[..., h:], x[..., :h]), -1)


def _rotate_reference(x: Tensor, c: Tensor, s: Tensor, backward: bool, interleaved: bool = False) -> Tensor:
    """c, s: cos/sin already [B or 1, 1, S, R]. Few view ops: on CPU decode each costs as much as the math."""
    r = c.shape[-1]
    full = r == x.shape[-1]
    x_rot = x if full else x[..., :r]
    if not backward:
        y = x_rot * c + _rotated(x_rot, interleaved, False) * s  # HF: q * cos + rotate_half(q) * sin
    else:
        y = x_rot * c + _rotated(x_rot * s, interleaved, True)  # eager autograd: the rotation's transpose
    if full:  # no concatenation (a copy per call)
        return y.contiguous()
    return torch.cat((y, x[..., r:]), -1).contiguous()


def rope_reference(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backward: bool = False,
                   interleaved: bool = False) -> tuple[Tensor, Tensor]:
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rotate_reference(q, c, s, backward, interleaved), _rotate_reference(k, c, s, backward, interleaved)


def _apply(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backward: bool, interleaved: bool) -> tuple[Tensor, Tensor]:
    _check(q, k, cos, sin)
    if select_triton(q):
        from slipstream.kernels.triton_rope import rope_apply

        return rope_apply(q, k, cos, sin, backward, interleaved)
    return rope_reference(q, k, cos, sin, backward, interleaved)


def _rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> tuple[Tensor, Tensor]:
    return _apply(q, k, cos, sin, False, interleaved)


def _rope_backward(grad_q: Tensor, grad_k: Tensor, cos: Tensor, sin: Tensor,
                   interleaved: bool = False) -> tuple[Tensor, Tensor]:
    return _apply(grad_q, grad_k, cos, sin, True, interleaved)


def _rope_fake(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> tuple[Tensor, Tensor]:
    _check(q, k, cos, sin)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output) -> None:
    _, _, cos, sin, interleaved = inputs
    ctx.save_for_backward(cos, sin)
    ctx.interleaved = interleaved


def _backward(ctx, grad_q: Tensor, grad_k: Tensor) -> tuple[Optional[Tensor], ...]:
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(
            "slipstream::rope does not compute gradients for cos/sin; pass them detached (HF builds them from a "
            "non-trainable inv_freq buffer) or keep this rotary embedding out of the rewrite."
        )
    cos, sin = ctx.saved_tensors
    grad_q, grad_k = rope_backward_op(grad_q, grad_k, cos, sin, ctx.interleaved)
    return grad_q, grad_k, None, None, None


rope_backward_op = define_op("rope_backward", _rope_backward, _rope_fake)
rope_op = define_op("rope", _rope, _rope_fake, _backward, _setup_context)


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> tuple[Tensor, Tensor]:
    """Rotary embedding of q [B, Hq, S, D] and k [B, Hk, S, D] with cos/sin [B or 1, S, R]; `interleaved`: pairs
    (2i, 2i + 1) instead of halves."""
    return rope_op(q, k, cos, sin, interleaved)
