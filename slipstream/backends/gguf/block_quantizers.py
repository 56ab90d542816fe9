"""ggml's reference block quantizers (`quantize_row_*_ref`), one per GGUF type, over whole tensors at once: float32
blocks in, ggml's struct layout out (see quants.py for the contract and how byte identity is checked). Each takes
float32 blocks (N, block_size) and returns uint8 (N, type_size).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from .ggml_bits import (QK_K, _EPS, _F, _colsum, _half, _half_bytes, _pack_2bit, _pack_k4_scales, _pack_nibbles_64,
                        _rint, _roundf_small, _safe, _signed_absmax)
from .scale_search import _groups_t, _make_q3, _make_qkx2, _make_qx, _ungroup_t


def _q_f32(x):
    return np.ascontiguousarray(x.astype("<f4")).view(np.uint8)


def _q_f16(x):
    return np.ascontiguousarray(x.astype("<f2")).view(np.uint8)


def _q_bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16           # round to nearest even (ggml_compute_fp32_to_bf16)
    h = np.where(nan, (u >> 16) | 64, rounded).astype("<u2")  # NaN: keep sign/payload top, force quiet
    return h.view(np.uint8)


def _q8_0(x):
    d = np.abs(x).max(-1, keepdims=True) / _F(127)
    y = x * np.where(d != 0, _F(1) / _safe(d), _F(0))
    return np.concatenate([_half_bytes(d), _roundf_small(y).view(np.uint8)], axis=1)


def _q4_0(x):
    d = _signed_absmax(x) / _F(-8)
    idd = np.where(d != 0, _F(1) / _safe(d), _F(0))
    q = np.clip(np.trunc(x * idd + _F(8.5)), 0, 15).astype(np.uint8)
    return np.concatenate([_half_bytes(d), q[:, :16] | (q[:, 16:] << 4)], axis=1)


def _q4_1(x):
    lo = x.min(-1, keepdims=True)
    d = (x.max(-1, keepdims=True) - lo) / _F(15)
    idd = np.where(d != 0, _F(1) / _safe(d), _F(0))
    q = np.clip(np.trunc((x - lo) * idd + _F(0.5)), 0, 15).astype(np.uint8)
    return np.concatenate([_half_bytes(d), _half_bytes(lo), q[:, :16] | (q[:, 16:] << 4)], axis=1)


def _qh32(q):
    """Fifth bits of 32 quants -> the little-endian uint32 qh of Q5_0/Q5_1 (bit j = element j)."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _q5_0(x):
    d = _signed_absmax(x) / _F(-16)
    idd = np.where(d != 0, _F(1) / _safe(d), _F(0))
    q = np.clip(np.trunc(x * idd + _F(16.5)), 0, 31).astype(np.uint8)
    qs = (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)
    return np.concatenate([_half_bytes(d), _qh32(q), qs], axis=1)


def _q5_1(x):
    lo = x.min(-1, keepdims=True)
    d = (x.max(-1, keepdims=True) - lo) / _F(31)
    idd = np.where(d != 0, _F(1) / _safe(d), _F(0))
    q = np.clip(np.trunc((x - lo) * idd + _F(0.5)), 0, 31).astype(np.uint8)
    qs = (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)
    return np.concatenate([_half_bytes(d), _half_bytes(lo), _qh32(q), qs], axis=1)


def _q2_k(x):
    n = x.shape[0]
    xb = x.reshape(n, 16, 16)
    xt = _groups_t(x, 16)
    scales, mins, L = _make_qkx2(xt, np.abs(xt), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.reshape(n, 16), mins.reshape(n, 16), _ungroup_t(L, n)
    max_scale = np.maximum(scales.max(1, keepdims=True), _F(0))
    max_min = np.maximum(mins.max(1, keepdims=True), _F(0))
    has_s, has_m = max_scale > 0, max_min > 0
    ls = np.where(has_s, _rint((_F(15) / _safe(max_scale)) * scales), 0)
    lm = np.where(has_m, _rint((_F(15) / _safe(max_min)) * mins), 0)
    ls, lm = np.clip(ls, 0, 15), np.clip(lm, 0, 15)
    d = _half(np.where(has_s, max_scale / _F(15), _F(0)))
    dmin = _half(np.where(has_m, max_min / _F(15), _F(0)))
    dq = (d.astype(_F) * ls)[..., None]
    mq = (dmin.astype(_F) * lm)[..., None]
    Lr = np.clip(_rint((xb + mq) / _safe(dq)), 0, 3)
    L = np.where(dq != 0, Lr, L).reshape(n, QK_K)
    sc = ls.astype(np.uint8) | (lm.astype(np.uint8) << 4)
    return np.concatenate([sc, _pack_2bit(L), d.view(np.uint8), dmin.view(np.uint8)], axis=1)


def _q3_k(x):
    n = x.shape[0]
    scales, L = _make_q3(_groups_t(x, 16), 4)
    scales, L = scales.reshape(n, 16), _ungroup_t(L, n)
    max_scale = _signed_absmax(scales)                                 # (n, 1)
    nz = max_scale != 0
    iscale = np.where(nz, _F(-32) / _safe(max_scale), _F(0))
    l6 = np.where(nz, np.clip(_rint(iscale * scales), -32, 31) + 32, 0).astype(np.uint8)   # (n, 16)
    d = _half(np.where(nz, _F(1) / _safe(iscale), _F(0)))
    dq = (d.astype(_F) * (l6.astype(_F) - 32))[..., None]
    Lr = np.clip(_rint(x.reshape(n, 16, 16) / _safe(dq)), -4, 3) + 4
    L = np.where(dq != 0, Lr, L).reshape(n, QK_K).astype(np.uint8)
    sc = np.empty((n, 12), np.uint8)
    sc[:, :8] = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    hi = (l6 >> 4).reshape(n, 4, 4)                                   # [group g = j // 4, k = j % 4]
    sc[:, 8:] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    hbits = (L >> 2).reshape(n, 8, 32)                                 # L > 3 <=> high bit set
    hmask = np.zeros((n, 32), np.uint8)
    for b in range(8):
        hmask |= hbits[:, b] << b
    return np.concatenate([hmask, _pack_2bit(L & 3), sc, d.view(np.uint8)], axis=1)


def _k_scales_mins(x, nmax, rmin, rdelta, nstep):
    """Shared front half of Q4_K/Q5_K: 8 groups of 32, weights sqrt(mean x^2) + |x|, then 6-bit scales/mins."""
    n = x.shape[0]
    xb = x.reshape(n, 8, 32)
    xt = _groups_t(x, 32)
    av_x = np.sqrt(_colsum(xt * xt) / _F(32))
    scales, mins, L = _make_qkx2(xt, av_x + np.abs(xt), nmax, rmin, rdelta, nstep, False)
    scales, mins, L = scales.reshape(n, 8), mins.reshape(n, 8), _ungroup_t(L, n)
    max_scale = np.maximum(scales.max(1, keepdims=True), _F(0))
    max_min = np.maximum(mins.max(1, keepdims=True), _F(0))
    inv_scale = np.where(max_scale > 0, _F(63) / _safe(max_scale), _F(0))
    inv_min = np.where(max_min > 0, _F(63) / _safe(max_min), _F(0))
    ls = np.clip(_rint(inv_scale * scales), 0, 63)
    lm = np.clip(_rint(inv_min * mins), 0, 63)
    d, dmin = _half(max_scale / _F(63)), _half(max_min / _F(63))
    dq = (d.astype(_F) * ls)[..., None]
    dm = (dmin.astype(_F) * lm)[..., None]
    Lr = np.clip(_rint((xb + dm) / _safe(dq)), 0, nmax)
    L = np.where(dq != 0, Lr, L).reshape(n, QK_K).astype(np.uint8)
    head = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), _pack_k4_scales(ls, lm)], axis=1)
    return head, L


def _q4_k(x):
    head, L = _k_scales_mins(x, 15, -1.0, 0.1, 20)
    return np.concatenate([head, _pack_nibbles_64(L)], axis=1)


def _q5_k(x):
    n = x.shape[0]
    head, L = _k_scales_mins(x, 31, -0.5, 0.1, 15)
    hb = (L >> 4).reshape(n, 8, 32)
    qh = np.zeros((n, 32), np.uint8)
    for s in range(8):
        qh |= hb[:, s] << s
    return np.concatenate([head, qh, _pack_nibbles_64(L & 0xF)], axis=1)


def _q6_k(x):
    n = x.shape[0]
    xb = x.reshape(n, 16, 16)
    scales, L = _make_qx(_groups_t(x, 16), 32)
    scales, L = scales.reshape(n, 16), _ungroup_t(L, n)
    max_scale = _signed_absmax(scales)
    zero = np.abs(max_scale) < _EPS
    iscale = np.where(zero, _F(0), _F(-128) / np.where(zero, _F(1), max_scale))
    d = _half(np.where(zero, _F(0), _F(1) / _safe(iscale)))
    sc = np.clip(_rint(iscale * scales), -128, 127)
    sc = np.where(zero, 0, sc)
    dq = (d.astype(_F) * sc)[..., None]
    Lr = np.clip(_rint(xb / _safe(dq)), -32, 31) + 32
    L = np.where(dq != 0, Lr, L)
    L = np.where(zero[..., None], 0, L).reshape(n, 2, 4, 32).astype(np.uint8)
    lo = L & 0xF
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    h = L >> 4
    qh = h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8),
                           d.view(np.uint8)], axis=1)


_QUANTIZERS = {
    QT.F32: _q_f32, QT.F16: _q_f16, QT.BF16: _q_bf16, QT.Q8_0: _q8_0,
    QT.Q4_0: _q4_0, QT.Q4_1: _q4_1, QT.Q5_0: _q5_0, QT.Q5_1: _q5_1,
    QT.Q2_K: _q2_k, QT.Q3_K: _q3_k, QT.Q4_K: _q4_k, QT.Q5_K: _q5_k, QT.Q6_K: _q6_k,
}
