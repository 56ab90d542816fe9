"""Triton kernel for rotate-half RoPE, forward and backward (the transposed rotation), q and k in one launch.

One program per token (b, s): it loads that token's cos/sin once and applies them to every q head and every k
head, in blocks of BLOCK_H heads. All input strides are passed through, so the usual q = x.view(B, S, H, D)
.transpose(1, 2) is read in place; outputs are contiguous [B, H, S, D].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_utils import launch_guard

# Elements per head block (both rotated halves plus the pass-through dims).
_TILE = 4096


@triton.jit
def _rnd(v, DT: tl.constexpr):
    """Round an fp32 value to the tensor dtype and back: where eager rounds each intermediate."""
    return v.to(DT).to(tl.float32)


@triton.jit
def _rotate_heads(
    X, Y, x_off, y_off, sx_h, sx_d, sy_h, H, D, R2, c1, c2, a1, a2,
    HAS_PASS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # y1 = x1*c1 + x2*a1 and y2 = x2*c2 + x1*a2 for the two rotated halves; dims 2*R2..D are copied.
    DT: tl.constexpr = Y.dtype.element_ty
    r = tl.arange(0, BLOCK_R2)[None, :]
    p = 2 * R2 + tl.arange(0, BLOCK_P)[None, :]
    for h0 in range(0, H, BLOCK_H):
        h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[:, None]
        xh = X + x_off + h * sx_h
        yh = Y + y_off + h * sy_h
        m = (h < H) & (r < R2)
        x1 = tl.load(xh + r * sx_d, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(xh + (r + R2) * sx_d, mask=m, other=0.0).to(tl.float32)
        tl.store(yh + r, (_rnd(x1 * c1, DT) + _rnd(x2 * a1, DT)).to(DT), mask=m)
        tl.store(yh + r + R2, (_rnd(x2 * c2, DT) + _rnd(x1 * a2, DT)).to(DT), mask=m)
        if HAS_PASS:
            pm = (h < H) & (p < D)
            tl.store(yh + p, tl.load(xh + p * sx_d, mask=pm), mask=pm)


@triton.jit
def _rope_kernel(
    Q, K, COS, SIN, QO, KO, S, HQ, HK, D, R2,
    sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d, sc_b, sc_s, sc_r, ss_b, ss_s, ss_r,
    BACKWARD: tl.constexpr, HAS_PASS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_P: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    b = tok // S
    s = tok % S
    r = tl.arange(0, BLOCK_R2)[None, :]
    rm = r < R2
    cp = COS + b * sc_b + s * sc_s
    sp = SIN + b * ss_b + s * ss_s
    c1 = tl.load(cp + r * sc_r, mask=rm, other=0.0).to(tl.float32)
    c2 = tl.load(cp + (r + R2) * sc_r, mask=rm, other=0.0).to(tl.float32)
    s1 = tl.load(sp + r * ss_r, mask=rm, other=0.0).to(tl.float32)
    s2 = tl.load(sp + (r + R2) * ss_r, mask=rm, other=0.0).to(tl.float32)
    if BACKWARD:  # transpose of [[c1, -s1], [s2, c2]]
        a1 = s2
        a2 = -s1
    else:
        a1 = -s1
        a2 = s2
    _rotate_heads(Q, QO, b * sq_b + s * sq_s, (b * HQ * S + s) * D, sq_h, sq_d, S * D, HQ, D, R2,
                  c1, c2, a1, a2, HAS_PASS, BLOCK_H, BLOCK_R2, BLOCK_P)
    _rotate_heads(K, KO, b * sk_b + s * sk_s, (b * HK * S + s) * D, sk_h, sk_d, S * D, HK, D, R2,
                  c1, c2, a1, a2, HAS_PASS, BLOCK_H, BLOCK_R2, BLOCK_P)


def rope_apply(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k (or, with backward=True, their grads by the transposed rotation)."""
    b, hq, s, d = q.shape
    hk, r = k.shape[1], cos.shape[-1]
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if b * s == 0:
        return qo, ko
    # Batch-1 cos/sin broadcast through a zero batch stride.
    cos, sin = cos.expand(b, s, r), sin.expand(b, s, r)
    block_r2 = triton.next_power_of_2(r // 2)
    block_p = triton.next_power_of_2(max(d - r, 1))
    block_h = min(triton.next_power_of_2(max(hq, hk)), max(1, _TILE // (2 * block_r2 + block_p)))
    with launch_guard(_rope_kernel, q):
        _rope_kernel[(b * s,)](
            q, k, cos, sin, qo, ko, s, hq, hk, d, r // 2,
            *q.stride(), *k.stride(), *cos.stride(), *sin.stride(),
            BACKWARD=backward, HAS_PASS=d > r, BLOCK_H=block_h, BLOCK_R2=block_r2, BLOCK_P=block_p,
            num_warps=4,
        )
    return qo, ko
