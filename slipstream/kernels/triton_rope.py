"""Triton kernel for RoPE, forward and backward (the transposed rotation), q and k in one launch. The rotated
pairs are halves (dim i with i + R/2, `rotate_half`) or, with INTERLEAVED, neighbours (2i with 2i + 1): only the
addresses differ, the arithmetic is the same.

A program owns BLOCK_S consecutive tokens of one batch row: it loads their cos/sin once and applies them to all
q heads and all k heads, BLOCK_H heads at a time ([BLOCK_S, BLOCK_H, R/2] tiles). With many heads BLOCK_S is 1
(one token per program); with few heads or short head dims several tokens share a program. All input strides
are passed through, so HF's q = x.view(B, S, H, D).transpose(1, 2) is read in place; outputs are contiguous
[B, H, S, D].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_utils import cdiv, launch_guard, next_power_of_2, warps_for

# Elements per tile (rotated halves plus pass-through dims, over BLOCK_S tokens and BLOCK_H heads).
_TILE = 4096


@triton.jit
def _rounded_sum(a, b, DT: tl.constexpr):
    """a + b as eager computes two rounded products and their sum in dtype DT (fp32 math, DT rounding)."""
    return (a.to(DT).to(tl.float32) + b.to(DT).to(tl.float32)).to(DT)


@triton.jit
def _pair(r, R2, INTERLEAVED: tl.constexpr):
    """The two dims of rotated pair r: (2r, 2r + 1) interleaved, else (r, r + R2)."""
    if INTERLEAVED:
        return 2 * r, 2 * r + 1
    else:
        return r, r + R2


@triton.jit
def _rotate_heads(
    X, Y, x_off, y_off, sx_h, sx_d, H, S, D, R2, s, c1, c2, a1, a2,
    HAS_PASS: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R2: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # y1 = x1*c1 + x2*a1 and y2 = x2*c2 + x1*a2 over each rotated pair, each product rounded to the
    # output dtype before the (rounded) sum, as eager does; dims 2*R2..D are copied.
    r = tl.arange(0, BLOCK_R2)[None, None, :]
    i1, i2 = _pair(r, R2, INTERLEAVED)
    p = 2 * R2 + tl.arange(0, BLOCK_P)[None, None, :]
    for h0 in range(0, H, BLOCK_H):
        h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[None, :, None]
        xh = X + x_off + h * sx_h
        yh = Y + y_off + h * S * D
        hm = (s < S) & (h < H)
        m = hm & (r < R2)
        x1 = tl.load(xh + i1 * sx_d, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(xh + i2 * sx_d, mask=m, other=0.0).to(tl.float32)
        tl.store(yh + i1, _rounded_sum(x1 * c1, x2 * a1, Y.dtype.element_ty), mask=m)
        tl.store(yh + i2, _rounded_sum(x2 * c2, x1 * a2, Y.dtype.element_ty), mask=m)
        if HAS_PASS:
            pm = hm & (p < D)
            tl.store(yh + p, tl.load(xh + p * sx_d, mask=pm), mask=pm)


@triton.jit
def _rope_kernel(
    Q, K, COS, SIN, QO, KO, S, HQ, HK, D, R2,
    sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d, sc_b, sc_s, sc_r, ss_b, ss_s, ss_r,
    BACKWARD: tl.constexpr, HAS_PASS: tl.constexpr, INTERLEAVED: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    s_blocks = tl.cdiv(S, BLOCK_S)
    b = (pid // s_blocks).to(tl.int64)
    s = ((pid % s_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)[:, None, None]
    r = tl.arange(0, BLOCK_R2)[None, None, :]
    cm = (s < S) & (r < R2)
    cp = COS + b * sc_b + s * sc_s
    sp = SIN + b * ss_b + s * ss_s
    i1, i2 = _pair(r, R2, INTERLEAVED)
    c1 = tl.load(cp + i1 * sc_r, mask=cm, other=0.0).to(tl.float32)
    c2 = tl.load(cp + i2 * sc_r, mask=cm, other=0.0).to(tl.float32)
    s1 = tl.load(sp + i1 * ss_r, mask=cm, other=0.0).to(tl.float32)
    s2 = tl.load(sp + i2 * ss_r, mask=cm, other=0.0).to(tl.float32)
    if BACKWARD:  # transpose of [[c1, -s1], [s2, c2]]
        a1 = s2
        a2 = -s1
    else:
        a1 = -s1
        a2 = s2
    _rotate_heads(Q, QO, b * sq_b + s * sq_s, b * HQ * S * D + s * D, sq_h, sq_d, HQ, S, D, R2, s,
                  c1, c2, a1, a2, HAS_PASS, INTERLEAVED, BLOCK_H, BLOCK_R2, BLOCK_P)
    _rotate_heads(K, KO, b * sk_b + s * sk_s, b * HK * S * D + s * D, sk_h, sk_d, HK, S, D, R2, s,
                  c1, c2, a1, a2, HAS_PASS, INTERLEAVED, BLOCK_H, BLOCK_R2, BLOCK_P)


def _blocks(s: int, h: int, d: int, r: int) -> tuple[int, int, int, int]:
    block_r2 = next_power_of_2(r // 2)
    block_p = next_power_of_2(d - r) if d > r else 1
    per_head = 2 * block_r2 + (block_p if d > r else 0)
    block_h = min(next_power_of_2(h), max(1, _TILE // per_head))
    block_s = min(next_power_of_2(s), max(1, _TILE // (per_head * block_h)))
    return block_s, block_h, block_r2, block_p


def rope_apply(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k (or, with backward=True, their grads by the transposed rotation); pairs of neighbouring dims
    with `interleaved`, else halves."""
    b, hq, s, d = q.shape
    hk, r = k.shape[1], cos.shape[-1]
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if b * s == 0:
        return qo, ko
    # Batch-1 cos/sin broadcast through a zero batch stride.
    cos, sin = cos.expand(b, s, r), sin.expand(b, s, r)
    block_s, block_h, block_r2, block_p = _blocks(s, max(hq, hk), d, r)
    with launch_guard(_rope_kernel, q):
        _rope_kernel[(b * cdiv(s, block_s),)](
            q, k, cos, sin, qo, ko, s, hq, hk, d, r // 2,
            *q.stride(), *k.stride(), *cos.stride(), *sin.stride(),
            BACKWARD=backward, HAS_PASS=d > r, INTERLEAVED=interleaved,
            BLOCK_S=block_s, BLOCK_H=block_h, BLOCK_R2=block_r2, BLOCK_P=block_p,
            num_warps=warps_for(block_s * block_h * (2 * block_r2 + block_p)),
            # Eager runs q*cos, rot*sin and their sum as separate kernels; an FMA would skip a rounding (fp32).
            enable_fp_fusion=False,
        )
    return qo, ko
