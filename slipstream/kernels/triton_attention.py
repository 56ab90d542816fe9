"""Triton attention forward kernels: flash (prefill) and split-K decode, both returning out and lse.

Learned from (read, not copied): the Triton fused-attention tutorial (online softmax in exp2 units, causal block
ranges) and FlashAttention-2 (Dao 2023: a query block per program, K/V streamed, the fp32 accumulator rescaled
by alpha per block and divided by the row sum only once, at the end).
The decode path follows Flash-Decoding (Dao et al. 2023 blog): the keys are split in chunks across programs,
each emits a normalised partial output and its log-sum-exp, and a small kernel merges them.

Conventions shared with triton_attention_bwd.py:
- query i sits at absolute position T - S + i; key j is visible iff j < T, key_padding[b, j], (causal) j <= pos,
  (window) j > pos - window. Masks are built from blocks only (see dispatch.py's interpreter caveat).
- scores are kept in log2 units (x * log2(e) = x * 1.4426950408889634) so the softmax uses exp2; the saved lse
  is in natural units (times ln 2 = 0.6931471805599453) and is +inf for a row with no visible key, so every
  recomputed probability exp(s - lse) of that row is 0.
- the running max starts at -1e30, not -inf: a block with no visible key then gives exp2(-inf - m) = 0 rather
  than NaN from (-inf) - (-inf).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_utils import cdiv, launch_guard, next_power_of_2, persistent_programs

# Decode packs the group's query heads x S queries into one row block, capped so the tile stays in registers.
DECODE_MAX_ROWS = 64
MAX_SPLITS = 128


@triton.jit
def _tanh(x):
    # No portable tl.tanh (libdevice is CUDA-only and not interpreted); this form is exact enough in fp32.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """fp32-accumulating dot; "upcast" works around the interpreter's bf16 dot (triton 3.9 multiplies the raw
    uint16 bit patterns): bf16 products are exact in fp32, so upcasting changes only the summation order."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _visible(rows, cols, S, T, window, kp_ptr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, HAS_PAD: tl.constexpr):
    """Bool tile: query `rows` may attend key `cols` (rows/cols are broadcastable index tiles)."""
    pos = rows + (T - S)
    vis = (cols < T) & (rows < S)
    if CAUSAL:
        vis = vis & (cols <= pos)
    if WINDOW:
        vis = vis & (cols > pos - window)
    if HAS_PAD:
        keep = tl.load(kp_ptr + cols, mask=cols < T, other=0)
        vis = vis & (keep != 0)
    return vis


@triton.jit
def _capped(x, softcap, SOFTCAP: tl.constexpr):
    """Scaled scores x -> softcap * tanh(x / softcap) (Gemma 2) when enabled."""
    if SOFTCAP:
        x = softcap * _tanh(x / softcap)
    return x


@triton.jit
def _keep(seed, bh, rows, cols, p_drop):
    """Dropout's keep decision for scores (bh, rows, cols) (broadcastable index tiles): Philox on the counter
    (column, row, batch * heads + head), so the forward and both backward kernels draw the same number for a
    score whatever their tiling or layout (FlashAttention's regenerate-don't-store)."""
    zero = (rows + cols) * 0
    r, _, _, _ = tl.philox(seed, (cols + zero).to(tl.uint32), (rows + zero).to(tl.uint32),
                           (bh + zero).to(tl.uint32), zero.to(tl.uint32))
    return tl.uint_to_uniform_float(r) >= p_drop


@triton.jit
def _key_range(start_m, S, T, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi) of keys any query in [start_m, start_m + BLOCK_M) can see; lo aligned to BLOCK_N."""
    lo = start_m * 0
    hi = lo + T
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M + T - S)
    if WINDOW:
        lo = tl.maximum(lo, start_m + T - S - window + 1)
        lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _unmasked_keys(lo, hi, start_m, S, T, window, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                   HAS_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[a, b), block-aligned, lo <= a <= b <= hi: key blocks that every query of [start_m, +BLOCK_M) sees whole,
    so their steps skip the mask (FlashAttention-2's split of the diagonal blocks from the rest). Blocks of
    [lo, a) and [b, hi) are masked. A padding mask can hide any key: then every block is masked."""
    end = T
    if CAUSAL:  # the block's first query (position start_m + T - S) sees every key up to its position
        end = tl.minimum(end, start_m + T - S + 1)
    b = tl.maximum((tl.maximum(end, 0) // BLOCK_N) * BLOCK_N, lo)
    a = lo
    if WINDOW:  # the block's last query sees keys from position start_m + BLOCK_M - 1 + T - S - window + 1
        first = tl.maximum(start_m + BLOCK_M + T - S - window, 0)
        a = tl.maximum(a, ((first + BLOCK_N - 1) // BLOCK_N) * BLOCK_N)
    a = tl.minimum(a, b)
    if HAS_PAD:
        a = lo
        b = lo
    return a, b


@triton.jit
def _online_softmax_step(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, rows, start_n, S, T, D,
                         qk_scale, softcap, window, kp_ptr, seed, bh, p_drop, MASKED: tl.constexpr,
                         CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr,
                         DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    """One key block of the online softmax. Dropout zeroes probabilities in the output's sum only: the
    normaliser l_i (and so the lse) is the dropout-free softmax's; the 1 / (1 - p) factor is applied to the fp32
    output at the end, so 16-bit P rounds as without dropout."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None],
                 mask=(cols[None, :] < T) & (offs_d[:, None] < D), other=0.0)
    if SOFTCAP:
        s = _capped(_dot(q, kt, PRECISION) * qk_scale, softcap, SOFTCAP) * 1.4426950408889634
    else:
        s = _dot(q, kt, PRECISION) * (qk_scale * 1.4426950408889634)
    if MASKED:
        vis = _visible(rows[:, None], cols[None, :], S, T, window, kp_ptr, CAUSAL, WINDOW, HAS_PAD)
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :],
                mask=(cols[:, None] < T) & (offs_d[None, :] < D), other=0.0)
    l_new = l_i * alpha + tl.sum(p, 1)
    if DROPOUT:
        p = tl.where(_keep(seed, bh, rows[:, None], cols[None, :], p_drop), p, 0.0)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
    return acc, m_new, l_new


@triton.jit
def _attn_fwd_tile(q_base, k_base, v_base, o_base, lse_base, kp_ptr, sqm, skn, svn, som, start_m, S, T, D,
                   qk_scale, softcap, window, seed, bh, p_drop, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                   SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Query rows [start_m, +BLOCK_M) of one (sequence, head): bases point at its row 0 (shared with varlen).
    Rows >= S load q = 0 and are never stored, so unmasked steps may compute them freely."""
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < S) & (offs_d[None, :] < D)
    q = tl.load(q_base + rows[:, None] * sqm + offs_d[None, :], mask=mask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo, hi = _key_range(start_m, S, T, window, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    a, b = _unmasked_keys(lo, hi, start_m, S, T, window, CAUSAL, WINDOW, HAS_PAD, BLOCK_M, BLOCK_N)
    for start_n in range(lo, a, BLOCK_N):
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap, window,
            kp_ptr, seed, bh, p_drop, True, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT, PRECISION, BLOCK_N, BLOCK_D)
    for start_n in range(a, b, BLOCK_N):
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap, window,
            kp_ptr, seed, bh, p_drop, False, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT, PRECISION, BLOCK_N, BLOCK_D)
    for start_n in range(b, hi, BLOCK_N):
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, k_base, v_base, skn, svn, rows, start_n, S, T, D, qk_scale, softcap, window,
            kp_ptr, seed, bh, p_drop, True, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT, PRECISION, BLOCK_N, BLOCK_D)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if DROPOUT:
        out = out / (1.0 - p_drop)
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(o_base + rows[:, None] * som + offs_d[None, :], out.to(o_base.dtype.element_ty), mask=mask)
    tl.store(lse_base + rows, lse, mask=rows < S)


@triton.jit
def _block_index(CAUSAL: tl.constexpr):
    """This program's query block: under a causal mask the last blocks (the most keys) are launched first."""
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid
    return pid


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, skpb,
    H, GROUP, S, T, D, qk_scale, softcap, window, seed, p_drop,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    kvh = h // GROUP  # GQA/MQA: read the shared kv head in place, never a repeated copy
    _attn_fwd_tile(Q + b * sqb + h * sqh, K + b * skb + kvh * skh, V + b * svb + kvh * svh, O + b * sob + h * soh,
                   LSE + bh.to(tl.int64) * S, KP + b * skpb, sqm, skn, svn, som, _block_index(CAUSAL) * BLOCK_M,
                   S, T, D, qk_scale, softcap, window, seed, bh, p_drop, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, DROPOUT,
                   PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


@triton.jit
def _attn_decode_kernel(
    Q, K, V, PO, PL, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, skpb,
    B, HKV, GROUP, S, T, D, chunk, qk_scale, softcap, window,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, HAS_PAD: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (split, batch, kv head): all GROUP query heads x S queries as rows, keys [split*chunk, +chunk)."""
    split = tl.program_id(0)
    bkv = tl.program_id(1)
    b = (bkv // HKV).to(tl.int64)
    kvh = bkv % HKV
    r = tl.arange(0, BLOCK_M)
    g = r // S
    i = r % S
    h = kvh * GROUP + g
    rows_ok = r < GROUP * S
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * sqb + h[:, None] * sqh + i[:, None] * sqm + offs_d[None, :],
                mask=rows_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    k_base, v_base, kp_ptr = K + b * skb + kvh * skh, V + b * svb + kvh * svh, KP + b * skpb
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, T)
    if WINDOW:  # the earliest query (position T - S) sees nothing before T - S - window + 1; aligned so that
        # no block reads past this split's chunk (a multiple of BLOCK_N) into the next one's keys
        lo = tl.maximum(lo, ((T - S - window + 1) // BLOCK_N) * BLOCK_N)
    # Rows of padding (r >= GROUP * S) are masked via i = S (never < S).
    i_vis = tl.where(rows_ok, i, S)
    for start_n in range(lo, hi, BLOCK_N):
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, k_base, v_base, skn, svn, i_vis, start_n, S, T, D, qk_scale, softcap, window,
            kp_ptr, 0, 0, 0.0, True, CAUSAL, WINDOW, SOFTCAP, HAS_PAD, False, PRECISION, BLOCK_N, BLOCK_D)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    # Partials are [splits, B, Hq, S, (D)] fp32; a row outside this split's keys (chunk cut by hi) is empty.
    row = ((split * B + b) * (HKV * GROUP) + h) * S + i
    tl.store(PO + row[:, None] * D + offs_d[None, :], out, mask=rows_ok[:, None] & (offs_d[None, :] < D))
    tl.store(PL + row, lse, mask=rows_ok)


@triton.jit
def _attn_decode_combine_kernel(PO, PL, O, LSE, n_rows, splits, D,
                                BLOCK_SPLIT: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the splits' partial (out, lse) of one query row: weights exp(lse_k - max)."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, BLOCK_SPLIT)
    offs_d = tl.arange(0, BLOCK_D)
    lse_k = tl.load(PL + sp * n_rows + row, mask=sp < splits, other=float("-inf"))
    mx = tl.max(lse_k, 0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.exp(lse_k - mx)
    total = tl.sum(w, 0)
    o = tl.load(PO + (sp[:, None] * n_rows + row) * D + offs_d[None, :],
                mask=(sp[:, None] < splits) & (offs_d[None, :] < D), other=0.0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + row * D + offs_d, out.to(O.dtype.element_ty), mask=offs_d < D)
    tl.store(LSE + row, tl.where(total == 0.0, float("inf"), mx + tl.log(tl.where(total == 0.0, 1.0, total))))


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def precision(t: torch.Tensor) -> str:
    """The kernels' PRECISION: fp32 inputs get true fp32 dots (like eager fp32 matmul), not TF32; 16-bit dots
    ignore it, except interpreted bf16, which `_dot` upcasts."""
    if t.dtype == torch.float32:
        return "ieee"
    return "upcast" if t.dtype == torch.bfloat16 and t.device.type == "cpu" else "tf32"


def pad_mask(key_padding, q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(int8 [B, T] mask or a dummy pointer, its batch stride); bool pointers are avoided for portability."""
    if key_padding is None:
        return q, 0
    kp = key_padding.to(torch.int8).contiguous()
    return kp, kp.stride(0)


SHORT_SEQ = 1024  # query lengths up to this take the tiles swept at S=1024 (16-bit, D = 128; see _fwd_config)


def _fwd_config(block_d: int, dtype: torch.dtype, s: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for `s` query rows: tutorial-like tiles, halved where registers/smem
    run out. The 16-bit D = 128 tiles are the fastest of benchmarks/attention_tune.py's sweeps (BENCHMARKS.md): at
    S=4096 on an H200, and at S=1024 on an H100, where a half-height tile gives twice the programs and won by 5 %
    (2048 was not swept)."""
    if block_d > 128 or dtype == torch.float32:
        return (64, 32, 4, 2) if block_d <= 128 else (32, 32, 4, 2)
    if block_d == 128 and s <= SHORT_SEQ:
        return (64, 32, 4, 3)
    return (128, 64, 4 if block_d <= 64 else 8, 3)


def flash_forward(q, k, v, key_padding, causal: bool, scale: float, window: int, softcap: float,
                  dropout_p: float = 0.0, seed: int = 0):
    """out [B, Hq, S, D] (q's dtype, contiguous) and lse [B, Hq, S] fp32 (of the dropout-free softmax). With
    dropout_p > 0 each probability is kept with probability 1 - dropout_p (Philox stream `seed`, see `_keep`)
    and scaled by 1 / (1 - dropout_p)."""
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    b, hq, s, d = q.shape
    hkv, t_len = k.shape[1], k.shape[2]
    out = torch.empty((b, hq, s, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, s), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("inf"))
    kp, skpb = pad_mask(key_padding, q)
    block_d = max(16, next_power_of_2(d))
    block_m, block_n, warps, stages = _fwd_config(block_d, q.dtype, s)
    with launch_guard(_attn_fwd_kernel, q):
        _attn_fwd_kernel[(cdiv(s, block_m), b * hq)](
            q, k, v, out, lse, kp, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], skpb,
            hq, hq // hkv, s, t_len, d, scale, softcap, window, seed, dropout_p,
            CAUSAL=causal, WINDOW=window > 0, SOFTCAP=softcap > 0, HAS_PAD=key_padding is not None,
            DROPOUT=dropout_p > 0, PRECISION=precision(q), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            num_warps=warps, num_stages=stages,
        )
    return out, lse


def decode_splits(q: torch.Tensor, work: int, t_len: int, block_n: int) -> int:
    """Enough splits to give every SM ~2 programs (4 programs on CPU), each chunk at least one key block."""
    target = 2 * persistent_programs(q, 1 << 30)
    return max(1, min(MAX_SPLITS, cdiv(t_len, block_n), cdiv(target, max(work, 1))))


def decode_forward(q, k, v, key_padding, causal: bool, scale: float, window: int, softcap: float,
                   num_splits: int | None = None):
    """Split-K attention for few queries (S * Hq/Hkv <= DECODE_MAX_ROWS): same outputs as flash_forward."""
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    b, hq, s, d = q.shape
    hkv, t_len = k.shape[1], k.shape[2]
    group = hq // hkv
    if group * s > DECODE_MAX_ROWS:
        raise ValueError(f"attention decode: {group} heads x {s} queries > {DECODE_MAX_ROWS} rows; use flash")
    block_d = max(16, next_power_of_2(d))
    block_n = 64 if block_d <= 128 and q.dtype != torch.float32 else 32
    splits = num_splits or decode_splits(q, b * hkv, t_len, block_n)
    chunk = cdiv(cdiv(max(t_len, 1), splits), block_n) * block_n
    splits = max(1, cdiv(t_len, chunk))
    part_o = torch.empty((splits, b, hq, s, d), dtype=torch.float32, device=q.device)
    part_l = torch.empty((splits, b, hq, s), dtype=torch.float32, device=q.device)
    out = torch.empty((b, hq, s, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, s), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("inf"))
    kp, skpb = pad_mask(key_padding, q)
    block_m = max(16, next_power_of_2(group * s))
    with launch_guard(_attn_decode_kernel, q):
        _attn_decode_kernel[(splits, b * hkv)](
            q, k, v, part_o, part_l, kp, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], skpb,
            b, hkv, group, s, t_len, d, chunk, scale, softcap, window,
            CAUSAL=causal, WINDOW=window > 0, SOFTCAP=softcap > 0, HAS_PAD=key_padding is not None,
            PRECISION=precision(q), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
        )
        _attn_decode_combine_kernel[(b * hq * s,)](
            part_o, part_l, out, lse, b * hq * s, splits, d,
            BLOCK_SPLIT=next_power_of_2(splits), BLOCK_D=block_d, num_warps=1 if block_d <= 64 else 2,
        )
    return out, lse


@triton.jit
def _keep_mask_kernel(OUT, S, T, seed, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, bh, rows[:, None], cols[None, :], p_drop)
    tl.store(OUT + (bh.to(tl.int64) * S + rows[:, None]) * T + cols[None, :], keep.to(tl.int8),
             mask=(rows[:, None] < S) & (cols[None, :] < T))


def dropout_keep_mask(b: int, h: int, s: int, t: int, dropout_p: float, seed: int,
                      device: torch.device) -> torch.Tensor:
    """Bool [B, Hq, S, T]: the keep decisions the flash kernels draw for (dropout_p, seed) (tests, debugging)."""
    out = torch.empty((b, h, s, t), dtype=torch.int8, device=device)
    if out.numel():
        with launch_guard(_keep_mask_kernel, out):
            _keep_mask_kernel[(cdiv(s, 32), cdiv(t, 32), b * h)](out, s, t, seed, dropout_p,
                                                                              BLOCK_M=32, BLOCK_N=32)
    return out.bool()
