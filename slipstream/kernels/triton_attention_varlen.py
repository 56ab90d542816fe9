"""Triton kernels for packed (varlen) attention: the dense kernels' tiles with per-sequence bases.

q [total_q, Hq, D], k/v [total_k, Hkv, D]; sequence b owns query rows cu_seqlens_q[b]:cu_seqlens_q[b+1] and keys
cu_seqlens_k[b]:cu_seqlens_k[b+1], so no tile ever reads across a sequence boundary. The grid is sized by
max_seqlen_q/k (as in flash-attn's varlen API); programs past their sequence's end do nothing. lse and delta are
[Hq, total_q] fp32. Within a sequence, positions, masks and the GQA sums are those of triton_attention.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_attention import _attn_fwd_tile, _fwd_config, last_dim_contiguous, precision
from slipstream.kernels.triton_attention_bwd import _attn_bwd_delta_kernel, _attn_dkdv_tile, _attn_dq_tile
from slipstream.kernels.triton_attention_bwd import _bwd_config
from slipstream.kernels.triton_utils import cdiv, launch_guard, next_power_of_2


@triton.jit
def _seq(CU, b):
    """(first row as int64, length) of sequence b."""
    start = tl.load(CU + b)
    return start.to(tl.int64), tl.load(CU + b + 1) - start


@triton.jit
def _attn_varlen_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, sqt, sqh, skt, skh, svt, svh, sot, soh, total_q,
    H, GROUP, D, qk_scale, softcap, window,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    q0, S = _seq(CU_Q, b)
    k0, T = _seq(CU_K, b)
    if start_m < S:
        _attn_fwd_tile(Q + q0 * sqt + h * sqh, K + k0 * skt + kvh * skh, V + k0 * svt + kvh * svh,
                       O + q0 * sot + h * soh, LSE + h.to(tl.int64) * total_q + q0, Q, sqt, skt, svt, sot,
                       start_m, S, T, D, qk_scale, softcap, window, 0, 0, 0.0, CAUSAL, WINDOW, SOFTCAP, False,
                       False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


@triton.jit
def _attn_varlen_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, sqt, sqh, skt, skh, svt, svh, sdot, sdoh, total_q,
    H, GROUP, D, qk_scale, softcap, window,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    bkv = tl.program_id(1)
    hkv = H // GROUP
    b = bkv // hkv
    kvh = bkv % hkv
    h0 = kvh * GROUP
    q0, S = _seq(CU_Q, b)
    k0, T = _seq(CU_K, b)
    if start_n < T:
        lse0 = h0.to(tl.int64) * total_q + q0
        dkv = (k0 * hkv + kvh) * D  # dK/dV are contiguous [total_k, Hkv, D]
        _attn_dkdv_tile(Q + q0 * sqt + h0 * sqh, K + k0 * skt + kvh * skh, V + k0 * svt + kvh * svh,
                        DO + q0 * sdot + h0 * sdoh, DK + dkv, DV + dkv, LSE + lse0, DELTA + lse0, Q,
                        sqh, sqt, skt, svt, sdoh, sdot, hkv * D, total_q, start_n, GROUP, S, T, D,
                        qk_scale, softcap, window, 0, 0, 0.0, CAUSAL, WINDOW, SOFTCAP, False, False, PRECISION,
                        BLOCK_M, BLOCK_N, BLOCK_D)


@triton.jit
def _attn_varlen_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, sqt, sqh, skt, skh, svt, svh, sdot, sdoh, total_q,
    H, GROUP, D, qk_scale, softcap, window,
    CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kvh = h // GROUP
    q0, S = _seq(CU_Q, b)
    k0, T = _seq(CU_K, b)
    if start_m < S:
        lse0 = h.to(tl.int64) * total_q + q0
        _attn_dq_tile(Q + q0 * sqt + h * sqh, K + k0 * skt + kvh * skh, V + k0 * svt + kvh * svh,
                      DO + q0 * sdot + h * sdoh, DQ + (q0 * H + h) * D, LSE + lse0, DELTA + lse0, Q,
                      sqt, skt, svt, sdot, H * D, start_m, S, T, D, qk_scale, softcap, window,
                      0, 0, 0.0, CAUSAL, WINDOW, SOFTCAP, False, False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [st for t in tensors for st in t.stride()[:2]]


def varlen_forward(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float, window: int,
                   softcap: float):
    """out [total_q, Hq, D] (q's dtype, contiguous) and lse [Hq, total_q] fp32."""
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    total_q, hq, d = q.shape
    hkv, batch = k.shape[1], cu_q.shape[0] - 1
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.full((hq, total_q), float("inf"), dtype=torch.float32, device=q.device)
    if q.numel() == 0 or batch <= 0 or max_q <= 0:
        return out.zero_(), lse
    block_d = max(16, next_power_of_2(d))
    block_m, block_n, warps, stages = _fwd_config(block_d, q.dtype, max_q)
    with launch_guard(_attn_varlen_fwd_kernel, q):
        _attn_varlen_fwd_kernel[(cdiv(max_q, block_m), batch * hq)](
            q, k, v, out, lse, cu_q, cu_k, *_strides(q, k, v, out), total_q, hq, hq // hkv, d,
            scale, softcap, window, CAUSAL=causal, WINDOW=window > 0, SOFTCAP=softcap > 0,
            PRECISION=precision(q), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
            num_warps=warps, num_stages=stages,
        )
    return out, lse


def varlen_backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float,
                    window: int, softcap: float):
    """(dq, dk, dv), contiguous, in q/k/v's dtypes."""
    grad, q, k, v, out = (last_dim_contiguous(t) for t in (grad, q, k, v, out))
    lse = lse.contiguous()
    total_q, hq, d = q.shape
    total_k, hkv, batch = k.shape[0], k.shape[1], cu_q.shape[0] - 1
    dq = torch.zeros((total_q, hq, d), dtype=q.dtype, device=q.device)
    dk = torch.zeros((total_k, hkv, d), dtype=k.dtype, device=k.device)
    dv = torch.zeros((total_k, hkv, d), dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0 or batch <= 0:
        return dq, dk, dv
    block_d = max(16, next_power_of_2(d))
    (m1, n1, warps1, stages1), (m2, n2, warps2, stages2) = _bwd_config(block_d, q.dtype, max_q)
    delta = torch.empty((hq, total_q), dtype=torch.float32, device=q.device)
    flags = dict(CAUSAL=causal, WINDOW=window > 0, SOFTCAP=softcap > 0, PRECISION=precision(q), BLOCK_D=block_d)
    common = (*_strides(q, k, v, grad), total_q, hq, hq // hkv, d, scale, softcap, window)
    o4, g4 = out.unsqueeze(0).transpose(1, 2), grad.unsqueeze(0).transpose(1, 2)  # [1, Hq, total_q, D] views
    with launch_guard(_attn_varlen_dkdv_kernel, q):
        _attn_bwd_delta_kernel[(cdiv(total_q, 64), hq)](
            o4, g4, delta, *o4.stride()[:3], *g4.stride()[:3], hq, total_q, d, BLOCK_M=64, BLOCK_D=block_d)
        if max_k > 0:
            _attn_varlen_dkdv_kernel[(cdiv(max_k, n1), batch * hkv)](
                q, k, v, grad, lse, delta, dk, dv, cu_q, cu_k, *common, BLOCK_M=m1, BLOCK_N=n1, num_warps=warps1,
                num_stages=stages1, **flags)
        if max_q > 0:
            _attn_varlen_dq_kernel[(cdiv(max_q, m2), batch * hq)](
                q, k, v, grad, lse, delta, dq, cu_q, cu_k, *common, BLOCK_M=m2, BLOCK_N=n2, num_warps=warps2,
                num_stages=stages2, **flags)
    return dq, dk, dv
