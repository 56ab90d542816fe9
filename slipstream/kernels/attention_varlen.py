"""`slipstream::attention_varlen`: attention over packed sequences (no padding, no attention across sequences),
with its forward-with-lse and backward ops, structured like attention.py.

q [total_q, Hq, D], k/v [total_k, Hkv, D]; cu_seqlens_q/k int32 [B + 1] (cumulative, starting at 0 and ending at
total_q/total_k); max_seqlen_q/k bound the per-sequence lengths (they size the Triton grid). Within sequence b
the semantics are exactly slipstream::attention's for S = its query count and T = its key count (bottom-right
aligned causal, sliding window, soft-cap, GQA, empty rows -> 0). lse is [Hq, total_q].
"""
from typing import Optional

import torch
from torch import Tensor

from slipstream.kernels.attention import MAX_HEAD_DIM, attention_backward_reference, attention_reference, lse_dtype
from slipstream.kernels.dispatch import TRITON_DTYPES, select_triton
from slipstream.kernels.registry import call, define_op


def _check(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape or q.shape[2] != k.shape[2]:
        raise ValueError(f"attention_varlen: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must be "
                         "[total, H, D] with k and v of equal shape and a common D")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"attention_varlen: Hq={q.shape[1]} must be a multiple of Hkv={k.shape[1]}")
    if not q.is_floating_point() or q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"attention_varlen: q, k, v must share a floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_q.dtype != torch.int32 or cu_k.dtype != torch.int32 or cu_q.dim() != 1 or cu_q.shape != cu_k.shape:
        raise ValueError("attention_varlen: cu_seqlens_q/k must be int32 [B + 1] of equal length")


def _use_triton(q: Tensor) -> bool:
    return select_triton(q) and q.dtype in TRITON_DTYPES and q.shape[-1] <= MAX_HEAD_DIM


def _sequences(cu_q: Tensor, cu_k: Tensor):
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(bounds_q) - 1):
        yield slice(bounds_q[b], bounds_q[b + 1]), slice(bounds_k[b], bounds_k[b + 1])


def _dense(x: Tensor) -> Tensor:
    return x.transpose(0, 1).unsqueeze(0)  # [n, H, D] -> [1, H, n, D]


def attention_varlen_reference(q, k, v, cu_q, cu_k, causal, scale, window, softcap) -> tuple[Tensor, Tensor]:
    """Each sequence through the dense reference (host loop: reads cu_seqlens on the host)."""
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)
    lse = torch.full((q.shape[1], q.shape[0]), float("inf"), dtype=lse_dtype(q), device=q.device)
    for sq, sk in _sequences(cu_q, cu_k):
        o, l = attention_reference(_dense(q[sq]), _dense(k[sk]), _dense(v[sk]), None, causal, scale, window, softcap)
        out[sq] = o[0].transpose(0, 1)
        lse[:, sq] = l[0].to(lse.dtype)
    return out, lse


def attention_varlen_backward_reference(grad, q, k, v, out, lse, cu_q, cu_k, causal, scale, window, softcap):
    dq, dk, dv = (torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    for sq, sk in _sequences(cu_q, cu_k):
        g = attention_backward_reference(_dense(grad[sq]), _dense(q[sq]), _dense(k[sk]), _dense(v[sk]),
                                         _dense(out[sq]), lse[:, sq].unsqueeze(0), None, causal, scale, window,
                                         softcap)
        dq[sq], dk[sk], dv[sk] = (x[0].transpose(0, 1) for x in g)
    return dq, dk, dv


def _forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
             max_seqlen_k: int, causal: bool, scale: float, window: int, softcap: float) -> tuple[Tensor, Tensor]:
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if _use_triton(q):
        from slipstream.kernels.triton_attention_varlen import varlen_forward

        return varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
                              window, softcap)
    return attention_varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, window, softcap)


def _forward_fake(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                  max_seqlen_k: int, causal: bool, scale: float, window: int, softcap: float) -> tuple[Tensor, Tensor]:
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype(q))


def _attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float, window: int,
                      softcap: float) -> Tensor:
    return _forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window,
                    softcap)[0]


def _attention_varlen_fake(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float, window: int,
                           softcap: float) -> Tensor:
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    return q.new_empty(q.shape)


def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens_q: Tensor,
              cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float, window: int,
              softcap: float) -> tuple[Tensor, Tensor, Tensor]:
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if _use_triton(q):
        from slipstream.kernels.triton_attention_varlen import varlen_backward

        return varlen_backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                               max_seqlen_k, causal, scale, window, softcap)
    return attention_varlen_backward_reference(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal,
                                               scale, window, softcap)


def _backward_fake(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                   scale: float, window: int, softcap: float) -> tuple[Tensor, Tensor, Tensor]:
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_forward(ctx, inputs, output) -> None:
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(*inputs[:5], out, lse)
    ctx.options = inputs[5:]


def _backward_forward(ctx, grad_out: Tensor, _grad_lse: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    q, k, v, cu_q, cu_k, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_varlen_backward_op(grad_out, q, k, v, out, lse, cu_q, cu_k, *ctx.options)
    return (dq, dk, dv) + (None,) * 8


def _setup_out_only(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:5])
    ctx.options = inputs[5:]


def _backward_out_only(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
    q, k, v, cu_q, cu_k = ctx.saved_tensors
    # recompute: see attention.py
    out, lse = call(torch.ops.slipstream.attention_varlen_forward.default, q, k, v, cu_q, cu_k, *ctx.options)
    dq, dk, dv = attention_varlen_backward_op(grad_out, q, k, v, out, lse, cu_q, cu_k, *ctx.options)
    return (dq, dk, dv) + (None,) * 8


attention_varlen_backward_op = define_op("attention_varlen_backward", _backward, _backward_fake)
attention_varlen_forward_op = define_op(
    "attention_varlen_forward", _forward, _forward_fake, _backward_forward, _setup_forward)
attention_varlen_op = define_op(
    "attention_varlen", _attention_varlen, _attention_varlen_fake, _backward_out_only, _setup_out_only)


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     max_seqlen_q: int, max_seqlen_k: int, causal: bool = True, scale: Optional[float] = None,
                     window: int = -1, softcap: float = 0.0) -> Tensor:
    """Packed-sequence attention; grad-requiring calls go through the lse-saving forward op."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), bool(causal),
            float(q.shape[-1] ** -0.5 if scale is None else scale), int(window) if window > 0 else -1,
            float(softcap) if softcap > 0 else 0.0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return call(torch.ops.slipstream.attention_varlen_forward.default, *args)[0]
    return call(torch.ops.slipstream.attention_varlen.default, *args)  # decode steps: the implementation
