"""Triton attention backward, FlashAttention-2 style (Dao 2023, Alg. 2; the Triton fused-attention tutorial's
split into a dk/dv kernel over key blocks and a dq kernel over query blocks, so neither needs atomics).

P is recomputed from the saved lse: p = exp(s - lse) (0 for masked keys and for rows with lse = +inf), and with
delta = rowsum(dO * O) (preprocess kernel): dS = P * (dP - delta), times 1 - tanh^2 under a soft-cap.
GQA/MQA: a dk/dv program owns one kv head's key block and loops over the Hq/Hkv query heads that share it,
accumulating in fp32 registers: dk/dv are summed in-kernel, deterministically, with no per-q-head buffer.
Masks, block ranges and the score units follow triton_attention.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_attention import _block_index, _capped, _dot, _keep, _key_range, _unmasked_keys, _visible
from slipstream.kernels.triton_attention import SHORT_SEQ, last_dim_contiguous, pad_mask, precision
from slipstream.kernels.triton_utils import cdiv, launch_guard, next_power_of_2


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, sob, soh, som, sdb, sdh, sdm, H, S, D,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < S) & (offs_d[None, :] < D)
    o = tl.load(O + b * sob + h * soh + rows[:, None] * som + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdm + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * S + rows, delta, mask=rows < S)


@triton.jit
def _query_range(start_n, S, T, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi) of queries that can see any key in [start_n, start_n + BLOCK_N); lo aligned to BLOCK_M."""
    lo = start_n * 0
    hi = lo + S
    if CAUSAL:  # pos = i + T - S >= j
        lo = tl.maximum(lo, start_n - (T - S))
        lo = (lo // BLOCK_M) * BLOCK_M
    if WINDOW:  # j > pos - window  <=>  i < j - (T - S) + window
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 - (T - S) + window)
    return lo, hi


@triton.jit
def _unmasked_queries(lo, hi, start_n, S, T, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                      HAS_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[a, b), lo <= a <= b <= hi, a block-aligned: query blocks that see every key of [start_n, +BLOCK_N) (see
    _unmasked_keys). Query rows >= S (lse = +inf, p = 0) and key columns >= T (never stored) need no mask."""
    a = lo
    b = hi
    if CAUSAL:  # a query at position i + T - S sees the block's last key start_n + BLOCK_N - 1
        first = tl.maximum(start_n + BLOCK_N - 1 - (T - S), 0)
        a = tl.minimum(tl.maximum(a, ((first + BLOCK_M - 1) // BLOCK_M) * BLOCK_M), hi)
    if WINDOW:  # ... and a query block whose last row still sees the block's first key
        b = tl.minimum(b, (tl.maximum(start_n + window - (T - S), 0) // BLOCK_M) * BLOCK_M)
    b = tl.maximum(b, a)
    if HAS_PAD:
        a = lo
        b = lo
    return a, b


@triton.jit
def _query_block(q_base, do_base, lse_base, delta_base, sqm, sdom, rows, S, D, BLOCK_D: tl.constexpr):
    """q, dO, lse (log2 units; +inf past S, so those rows' P is 0) and delta of query `rows` (shared by both
    backward kernels)."""
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < S) & (offs_d[None, :] < D)
    q = tl.load(q_base + rows[:, None] * sqm + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(do_base + rows[:, None] * sdom + offs_d[None, :], mask=mask, other=0.0)
    lse = tl.load(lse_base + rows, mask=rows < S, other=float("inf")) * 1.4426950408889634
    delta = tl.load(delta_base + rows, mask=rows < S, other=0.0)
    return q, do, lse, delta


@triton.jit
def _probabilities(s, lse, rows, cols, S, T, window, kp_ptr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                   WINDOW: tl.constexpr, HAS_PAD: tl.constexpr):
    """P = exp(s - lse) recomputed from the forward's lse (log2 units); masked steps zero invisible keys. rows,
    cols and lse are broadcastable tiles, so one helper serves the [queries, keys] and [keys, queries] layouts."""
    st = s * 1.4426950408889634 - lse
    if MASKED:
        vis = _visible(rows, cols, S, T, window, kp_ptr, CAUSAL, WINDOW, HAS_PAD)
        st = tl.where(vis, st, float("-inf"))
    return tl.exp2(st)


@triton.jit
def _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, cols, start_m, S, T, D,
               qk_scale, softcap, window, kp_ptr, seed, bh, p_drop, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """One query block against this program's key block, all in the transposed [keys, queries] layout.
    Dropout (FlashAttention's backward): dV takes the dropped, rescaled P; dP = keep * (dO V^T) / (1 - p)."""
    rows = start_m + tl.arange(0, BLOCK_M)
    q, do, lse, delta = _query_block(q_base, do_base, lse_base, delta_base, sqm, sdom, rows, S, D, BLOCK_D)
    x = _dot(k, tl.trans(q), PRECISION) * qk_scale
    s = _capped(x, softcap, SOFTCAP)
    pt = _probabilities(s, lse[None, :], rows[None, :], cols[:, None], S, T, window, kp_ptr, MASKED, CAUSAL,
                        WINDOW, HAS_PAD)
    dpt = _dot(v, tl.trans(do), PRECISION)
    if DROPOUT:
        keep = _keep(seed, bh, rows[None, :], cols[:, None], p_drop)
        dv += _dot(tl.where(keep, pt, 0.0).to(do.dtype), do, PRECISION)  # 1 / (1 - p) applied at the store
        dpt = tl.where(keep, dpt / (1.0 - p_drop), 0.0)
    else:
        dv += _dot(pt.to(do.dtype), do, PRECISION)
    dst = pt * (dpt - delta[None, :])
    if SOFTCAP:
        t = s / softcap
        dst = dst * (1.0 - t * t)
    dk += _dot(dst.to(q.dtype), q, PRECISION)
    return dk, dv


@triton.jit
def _attn_dkdv_tile(q_base, k_base, v_base, do_base, dk_base, dv_base, lse_base, delta_base, kp_ptr,
                    sqh, sqm, skn, svn, sdoh, sdom, sdkn, slh, start_n, GROUP, S, T, D, qk_scale, softcap, window,
                    seed, bh0, p_drop, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                    HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK/dV of keys [start_n, +BLOCK_N) of one kv head; q/do/lse/delta bases point at its first query head
    (heads sqh / sdoh / slh apart; bh0 is its batch * heads + head, dropout's counter). dk/dv share the row
    stride sdkn."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (cols[:, None] < T) & (offs_d[None, :] < D)
    k = tl.load(k_base + cols[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, hi = _query_range(start_n, S, T, window, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    a, b = _unmasked_queries(lo, hi, start_n, S, T, window, CAUSAL, WINDOW, HAS_PAD, BLOCK_M, BLOCK_N)
    for g in range(0, GROUP):
        qg, dog, lseg, deltag = q_base + g * sqh, do_base + g * sdoh, lse_base + g * slh, delta_base + g * slh
        for start_m in range(lo, a, BLOCK_M):
            dk, dv = _dkdv_step(dk, dv, k, v, qg, dog, lseg, deltag, sqm, sdom, cols, start_m, S, T, D, qk_scale,
                                softcap, window, kp_ptr, seed, bh0 + g, p_drop, True, CAUSAL, WINDOW, SOFTCAP,
                                HAS_PAD, DROPOUT, PRECISION, BLOCK_M, BLOCK_D)
        for start_m in range(a, b, BLOCK_M):
            dk, dv = _dkdv_step(dk, dv, k, v, qg, dog, lseg, deltag, sqm, sdom, cols, start_m, S, T, D, qk_scale,
                                softcap, window, kp_ptr, seed, bh0 + g, p_drop, False, CAUSAL, WINDOW, SOFTCAP,
                                HAS_PAD, DROPOUT, PRECISION, BLOCK_M, BLOCK_D)
        for start_m in range(b, hi, BLOCK_M):
            dk, dv = _dkdv_step(dk, dv, k, v, qg, dog, lseg, deltag, sqm, sdom, cols, start_m, S, T, D, qk_scale,
                                softcap, window, kp_ptr, seed, bh0 + g, p_drop, True, CAUSAL, WINDOW, SOFTCAP,
                                HAS_PAD, DROPOUT, PRECISION, BLOCK_M, BLOCK_D)
    out = cols[:, None] * sdkn + offs_d[None, :]
    tl.store(dk_base + out, (dk * qk_scale).to(dk_base.dtype.element_ty), mask=kv_mask)
    if DROPOUT:
        dv = dv / (1.0 - p_drop)
    tl.store(dv_base + out, dv.to(dv_base.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, skpb,
    H, GROUP, S, T, D, qk_scale, softcap, window, seed, p_drop,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bkv = tl.program_id(1)
    hkv = H // GROUP
    b = (bkv // hkv).to(tl.int64)
    kvh = bkv % hkv
    h0 = kvh * GROUP
    lse0 = (b * H + h0) * S
    dkv = bkv.to(tl.int64) * T * D  # dK/dV are contiguous [B, Hkv, T, D]
    _attn_dkdv_tile(Q + b * sqb + h0 * sqh, K + b * skb + kvh * skh, V + b * svb + kvh * svh,
                    DO + b * sdob + h0 * sdoh, DK + dkv, DV + dkv, LSE + lse0, DELTA + lse0, KP + b * skpb,
                    sqh, sqm, skn, svn, sdoh, sdom, D, S, tl.program_id(0) * BLOCK_N, GROUP, S, T, D,
                    qk_scale, softcap, window, seed, b * H + h0, p_drop, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT,
                    PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


@triton.jit
def _dq_step(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap, window,
             kp_ptr, seed, bh, p_drop, MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
             SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One key block's contribution to this program's query rows' dQ."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (cols[None, :] < T) & (offs_d[:, None] < D)
    kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None], mask=kv_mask, other=0.0)
    vt = tl.load(v_base + cols[None, :] * svn + offs_d[:, None], mask=kv_mask, other=0.0)
    s = _capped(_dot(q, kt, PRECISION) * qk_scale, softcap, SOFTCAP)
    p = _probabilities(s, lse[:, None], rows[:, None], cols[None, :], S, T, window, kp_ptr, MASKED, CAUSAL,
                       WINDOW, HAS_PAD)
    dp = _dot(do, vt, PRECISION)
    if DROPOUT:
        dp = tl.where(_keep(seed, bh, rows[:, None], cols[None, :], p_drop), dp / (1.0 - p_drop), 0.0)
    ds = p * (dp - delta[:, None])
    if SOFTCAP:
        t = s / softcap
        ds = ds * (1.0 - t * t)
    return dq + _dot(ds.to(kt.dtype), tl.trans(kt), PRECISION)


@triton.jit
def _attn_dq_tile(q_base, k_base, v_base, do_base, dq_base, lse_base, delta_base, kp_ptr, sqm, skn, svn, sdom,
                  sdqm, start_m, S, T, D, qk_scale, softcap, window, seed, bh, p_drop, CAUSAL: tl.constexpr,
                  WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ of query rows [start_m, +BLOCK_M) of one (sequence, head)."""
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < S) & (offs_d[None, :] < D)
    q, do, lse, delta = _query_block(q_base, do_base, lse_base, delta_base, sqm, sdom, rows, S, D, BLOCK_D)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _key_range(start_m, S, T, window, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    a, b = _unmasked_keys(lo, hi, start_m, S, T, window, CAUSAL, WINDOW, HAS_PAD, BLOCK_M, BLOCK_N)
    for start_n in range(lo, a, BLOCK_N):
        dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap,
                      window, kp_ptr, seed, bh, p_drop, True, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT, PRECISION,
                      BLOCK_N, BLOCK_D)
    for start_n in range(a, b, BLOCK_N):
        dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap,
                      window, kp_ptr, seed, bh, p_drop, False, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT, PRECISION,
                      BLOCK_N, BLOCK_D)
    for start_n in range(b, hi, BLOCK_N):
        dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap,
                      window, kp_ptr, seed, bh, p_drop, True, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT, PRECISION,
                      BLOCK_N, BLOCK_D)
    tl.store(dq_base + rows[:, None] * sdqm + offs_d[None, :], (dq * qk_scale).to(dq_base.dtype.element_ty),
             mask=mask)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, skpb,
    H, GROUP, S, T, D, qk_scale, softcap, window, seed, p_drop,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    kvh = h // GROUP
    row0 = bh.to(tl.int64) * S
    _attn_dq_tile(Q + b * sqb + h * sqh, K + b * skb + kvh * skh, V + b * svb + kvh * svh, DO + b * sdob + h * sdoh,
                  DQ + row0 * D, LSE + row0, DELTA + row0, KP + b * skpb, sqm, skn, svn, sdom, D,
                  _block_index(CAUSAL) * BLOCK_M, S, T, D, qk_scale, softcap, window, seed, bh, p_drop, CAUSAL, WINDOW,
                  SOFTCAP, HAS_PAD, DROPOUT, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


def _bwd_config(block_d: int, dtype: torch.dtype, s: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dk/dv kernel and of the dq kernel for `s` query rows. dk/dv
    keeps a key block and streams query blocks, dq the transpose. The 16-bit D <= 128 tiles are the fastest of
    benchmarks/attention_tune.py's sweeps (BENCHMARKS.md): S=4096 on an H200; S=1024 (SHORT_SEQ) on an H100, whose
    dq winner differs; the others are sized to fit registers."""
    if block_d > 128 or dtype == torch.float32:
        dkdv = (16, 32, 4, 2) if block_d > 128 else (32, 32, 4, 2)
        return dkdv, (dkdv[1], dkdv[0], dkdv[2], dkdv[3])
    if block_d == 128 and s <= SHORT_SEQ:
        return (32, 64, 4, 3), (64, 64, 4, 2)
    return (32, 64, 4, 3), (128, 64, 8, 3)


def flash_backward(grad, q, k, v, out, lse, key_padding, causal: bool, scale: float, window: int, softcap: float,
                   dropout_p: float = 0.0, seed: int = 0):
    """(dq, dk, dv), contiguous, in q/k/v's dtypes; lse is the forward's fp32 [B, Hq, S]; dropout_p and seed
    as the forward's (its keep decisions are drawn again, never stored)."""
    grad, q, k, v, out = (last_dim_contiguous(t) for t in (grad, q, k, v, out))
    lse = lse.contiguous()
    b, hq, s, d = q.shape
    hkv, t_len = k.shape[1], k.shape[2]
    dq = torch.empty((b, hq, s, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, hkv, t_len, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((b, hkv, t_len, d), dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    kp, skpb = pad_mask(key_padding, q)
    block_d = max(16, next_power_of_2(d))
    (m1, n1, warps1, stages1), (m2, n2, warps2, stages2) = _bwd_config(block_d, q.dtype, s)
    delta = torch.empty((b, hq, s), dtype=torch.float32, device=q.device)
    flags = dict(CAUSAL=causal, WINDOW=window > 0, SOFTCAP=softcap > 0, HAS_PAD=key_padding is not None,
                 DROPOUT=dropout_p > 0, PRECISION=precision(q), BLOCK_D=block_d)
    common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *grad.stride()[:3], skpb,
              hq, hq // hkv, s, t_len, d, scale, softcap, window, seed, dropout_p)
    with launch_guard(_attn_bwd_dkdv_kernel, q):
        _attn_bwd_delta_kernel[(cdiv(s, 64), b * hq)](
            out, grad, delta, *out.stride()[:3], *grad.stride()[:3], hq, s, d, BLOCK_M=64, BLOCK_D=block_d)
        _attn_bwd_dkdv_kernel[(cdiv(t_len, n1), b * hkv)](
            q, k, v, grad, lse, delta, dk, dv, kp, *common, BLOCK_M=m1, BLOCK_N=n1, num_warps=warps1,
            num_stages=stages1, **flags)
        _attn_bwd_dq_kernel[(cdiv(s, m2), b * hq)](
            q, k, v, grad, lse, delta, dq, kp, *common, BLOCK_M=m2, BLOCK_N=n2, num_warps=warps2,
            num_stages=stages2, **flags)
    return dq, dk, dv
