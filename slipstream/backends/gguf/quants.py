"""GGUF tensor quantization: our own vectorised numpy quantizers that write ggml's block layout byte for byte.

`quantize(data, qtype)` turns float32 rows into the bytes llama.cpp (and `gguf.quants.dequantize`) read, for F32,
F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K..Q6_K. The algorithms are those of llama.cpp's
reference quantizers (ggml/src/ggml-quants.c, `quantize_row_*_ref`), which is exactly what `llama-quantize` runs
when no importance matrix is given (`quantize_q4_K(..., quant_weights=NULL)` -> `quantize_row_q4_K_ref`, and so
on): the same per-block scale searches, the same weightings and the same requantization against the fp16-rounded
scales. The whole tensor is processed at once, blocks along an array axis; the only Python loops are small fixed
ones (a search's candidate steps, the 16 positions of Q3_K's coordinate descent, bit planes when packing).

The float32 operations are ggml's, in ggml's order: per-group sums run over a (group length, groups) layout so
numpy accumulates them row after row exactly like the C loops, nearest_int is np.rint (ties to even, as ggml's
magic-number trick), roundf is rebuilt exactly. Against llama.cpp built for x86-64 (its ggml-base has no FMA), every
type here comes out byte-identical to llama-quantize's (tests/backends/gguf/test_quants.py checks it).

`tensor_type(name, shape, mix, n_layers)` picks each tensor's type the way llama.cpp's `llama_tensor_get_type`
(src/llama-quant.cpp) does for the q3_k_m / q4_k_m / q5_k_m mixes, and a single type for the plain names.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

QT = GGMLQuantizationType
QK_K = 256
_F = np.float32
_EPS = _F(1e-15)             # ggml's GROUP_MAX_EPS: a group whose largest |x| is below it is all zero
_CHUNK_ELEMS = 1 << 18       # elements quantized per numpy pass (bounds temporaries; any size gives equal bytes)

SUPPORTED = (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
             QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)


# ----------------------------------------------------------------------------------------------- sizes and shapes

def block_size(qtype: QT) -> int:
    """Elements per block (1 for F32/F16/BF16, 32 for the legacy types, 256 for K-quants)."""
    return GGML_QUANT_SIZES[QT(qtype)][0]


def type_size(qtype: QT) -> int:
    """Bytes per block."""
    return GGML_QUANT_SIZES[QT(qtype)][1]


def byte_shape(shape: Sequence[int], qtype: QT) -> tuple[int, ...]:
    """The uint8 array shape `quantize` returns for a float tensor of `shape` (gguf's quant_shape_to_byte_shape)."""
    bs, ts = GGML_QUANT_SIZES[QT(qtype)]
    if shape[-1] % bs:
        raise ValueError(f"row length {shape[-1]} is not a multiple of {QT(qtype).name}'s block size {bs}")
    return (*shape[:-1], shape[-1] // bs * ts)


def supports(qtype: QT, cols: int) -> bool:
    """Whether rows of `cols` elements can be stored as `qtype` (K-quants need cols % 256 == 0, legacy % 32)."""
    return QT(qtype) in SUPPORTED and cols % block_size(qtype) == 0


# ------------------------------------------------------------------------------------------------------- helpers

def _half(a: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 (round to nearest even, as GGML_FP32_TO_FP16)."""
    return a.astype(np.float16)


def _half_bytes(a: np.ndarray) -> np.ndarray:
    """(N, 1) float -> (N, 2) little-endian fp16 bytes."""
    return np.ascontiguousarray(_half(a).astype("<f2")).view(np.uint8)


def _roundf(a: np.ndarray) -> np.ndarray:
    """C roundf: nearest, ties away from zero (exact: x - trunc(x) is exact in float32)."""
    t = np.trunc(a)
    return np.where(np.abs(a - t) >= 0.5, t + np.sign(a), t)


_JUST_BELOW_HALF = _F(0.49999997)  # the largest float32 below 0.5


def _roundf_small(y: np.ndarray) -> np.ndarray:
    """roundf for |y| < 128 as int8, in place of `y`, in two passes: add the largest float32 below 1/2 with y's sign,
    then truncate. Exact for every float32 in (-128, 128) (checked exhaustively; tests check the boundaries): a tie
    k + 1/2 sums to k + 1 - 2^-25, which rounds up to k + 1 for k >= 1 (and to even, 1.0, for k = 0); anything below
    a tie stays below k + 1."""
    y += np.copysign(_JUST_BELOW_HALF, y)
    return y.astype(np.int8)


# ggml's nearest_int (the 12582912 magic-number trick) rounds half to even, i.e. np.rint on float32.
_rint = np.rint


def _signed_absmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The value with the largest |x| along `axis` (first one on ties, as ggml's strict `>` scan), keepdims."""
    idx = np.abs(x).argmax(axis=axis)
    return np.take_along_axis(x, np.expand_dims(idx, axis), axis=axis)


def _safe(d: np.ndarray) -> np.ndarray:
    return np.where(d != 0, d, _F(1))


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(N, 256) values 0..3 -> (N, 64): byte 32c+l holds L[128c + 32k + l] at bits 2k (ggml's Q2_K/Q3_K qs)."""
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _pack_nibbles_64(L: np.ndarray) -> np.ndarray:
    """(N, 256) values 0..15 -> (N, 128): byte 32c+l = L[64c + l] | L[64c + 32 + l] << 4 (Q4_K/Q5_K qs)."""
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)


def _pack_k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (N, 8) -> ggml's 12-byte get_scale_min_k4 layout."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    lo = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    hi = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return np.concatenate([lo, mid, hi], axis=1)


def _unpack_k4_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of _pack_k4_scales: (N, 12) bytes -> scales (N, 8), mins (N, 8), as uint8."""
    lo, mid, hi = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


def _colsum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 of a C-contiguous (n, groups) array, keepdims. numpy adds the rows one after another, so
    every group's sum is accumulated in exactly the order of ggml's `for (i = 0; i < n; ++i) sum += ...` loops
    (float32 sums in another order, e.g. numpy's pairwise ones, would round differently)."""
    return a.sum(0, keepdims=True)


def _levels(x, mn, iscale, nmax: int) -> np.ndarray:
    """clip(nearest_int(iscale * (x - mn)), 0, nmax), in place on one temporary."""
    t = np.subtract(x, mn)
    t *= iscale
    np.rint(t, out=t)
    return np.clip(t, 0, nmax, out=t)


# ------------------------------------------------------------------------------ ggml's per-group scale searches
# Groups lie along axis 1: x is (group length, number of groups), C-contiguous, so that per-group sums are
# _colsum's sequential ones and each step of a search is a handful of whole-array operations.

def _make_qkx2(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """ggml make_qkx2_quants: x ~ scale*L - the_min with L in 0..nmax; weighted search over nstep+1 candidate
    inverse scales, each followed by a least-squares (scale, min) refit, keeping the best by weighted squared
    (or absolute, use_mad) error. Returns scale (1, G), the_min (1, G) (>= 0) and L (n, G) as float."""
    mn = np.minimum(x.min(0, keepdims=True), _F(0))
    mx = x.max(0, keepdims=True)
    sum_w = _colsum(w)
    sum_x = _colsum(w * x)
    flat = mx == mn
    iscale = _F(nmax) / np.where(flat, _F(1), mx - mn)
    scale = _F(1) / iscale
    L = _levels(x, mn, iscale, nmax)

    def error(s, m, La):
        d = s * La
        d += m
        d -= x
        if use_mad:
            np.abs(d, out=d)
        else:
            d *= d
        d *= w
        return _colsum(d)

    best = error(scale, mn, L)
    for step in range(nstep + 1):
        # ggml re-reads `min` here, which a better candidate below replaces: the search follows the refit min
        rng = mx - mn
        iscale = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / np.where(rng > 0, rng, _F(1))
        La = _levels(x, mn, iscale, nmax)
        wl = w * La
        sum_l = _colsum(wl)
        sum_l2 = _colsum(wl * La)
        sum_xl = _colsum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, _F(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, _F(0), this_min)
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, _F(1)), this_scale)
        cur = error(this_scale, this_min, La)
        better = ok & (cur < best) & ~flat
        np.copyto(L, La, where=better)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, _F(0), scale)
    np.copyto(L, _F(0), where=flat)
    return scale, -mn, L


def _make_qx(x, nmax: int):
    """ggml make_qx_quants with rmse_type=1 and no importance weights (the Q6_K path): symmetric x ~ scale*l,
    l in -nmax..nmax-1, weights x^2, 18 candidate scales around nmax/max. Returns scale (1, G), L + nmax (n, G)."""
    mx = _signed_absmax(x, axis=0)
    zero = np.abs(mx) < _EPS
    mx = np.where(zero, _F(1), mx)
    w = x * x
    wx = w * x

    def fit(iscale):
        l = x * iscale
        np.rint(l, out=l)
        np.clip(l, -nmax, nmax - 1, out=l)
        wl = w * l
        wl *= l
        return l, _colsum(wx * l), _colsum(wl)

    L, sumlx, suml2 = fit(_F(-nmax) / mx)
    scale = np.where(suml2 != 0, sumlx / _safe(suml2), _F(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = fit(-(_F(nmax) + _F(0.1) * _F(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        np.copyto(L, l, where=better)
        scale = np.where(better, sumlx / _safe(suml2), scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, _F(0), scale)
    np.copyto(L, _F(-nmax), where=zero)
    L += nmax
    return scale, L


def _make_q3(x, nmax: int):
    """ggml make_q3_quants with do_rmse (the Q3_K path): symmetric start at nmax/max, then up to 5 sweeps of
    coordinate descent, one element at a time, each change kept only if it raises sumlx^2/suml2 (weights x^2).
    Returns scale (G,) and L + nmax (n, G)."""
    mx = _signed_absmax(x, axis=0)[0]
    zero = np.abs(mx) < _EPS
    mx = np.where(zero, _F(1), mx)
    w = x * x
    wx = w * x
    L = np.clip(_rint((_F(-nmax) / mx) * x), -nmax, nmax - 1)
    sumlx = _colsum(wx * L)[0]
    suml2 = _colsum(w * L * L)[0]
    for _ in range(5):            # a sweep that changes nothing leaves the state as is, so no early exit needed
        for i in range(x.shape[0]):
            xi, wi, wxi, li = x[i], w[i], wx[i], L[i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            pos = slx > 0
            new = np.clip(_rint(xi * sl2 / np.where(pos, slx, _F(1))), -nmax, nmax - 1)
            slx_n = slx + wxi * new
            sl2_n = sl2 + wi * new * new
            take = pos & (new != li) & (sl2_n > 0) & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n)
            L[i] = np.where(take, new, li)
            sumlx = np.where(take, slx_n, sumlx)
            suml2 = np.where(take, sl2_n, suml2)
    scale = np.where(suml2 > 0, sumlx / _safe(suml2), _F(0))
    scale = np.where(zero, _F(0), scale)
    L = np.where(zero[None, :], _F(-nmax), L)
    return scale, L + nmax


def _groups_t(x: np.ndarray, n: int) -> np.ndarray:
    """(N, 256) super-blocks -> (n, N*256/n): group g's elements down column g (groups in memory order)."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _ungroup_t(L: np.ndarray, n_sb: int) -> np.ndarray:
    """Inverse of _groups_t for the level array: (n, G) -> (N, 256/n, n)."""
    return L.T.reshape(n_sb, QK_K // L.shape[0], L.shape[0])


# ----------------------------------------------------------------------------------------- block quantizers
# Each takes float32 blocks (N, block_size) and returns uint8 (N, type_size) in ggml's struct layout.

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


# --------------------------------------------------------------------------------------- block dequantizers
# Each takes uint8 blocks (N, type_size) and returns float32 (N, block_size), in the same float32 operation order
# as ggml's dequantize_row_* (and gguf.quants), so results agree to the bit.

def _dq_f32(b):
    return b.view("<f4").astype(_F)


def _dq_f16(b):
    return b.view("<f2").astype(_F)


def _dq_bf16(b):
    return (b.view("<u2").astype(np.uint32) << 16).view(_F)


def _d16(b):
    return np.ascontiguousarray(b).view("<f2").astype(_F)


def _nibbles32(qs):
    """(N, 16) bytes -> (N, 32): low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def _dq8_0(b):
    return _d16(b[:, :2]) * b[:, 2:].view(np.int8).astype(_F)


def _dq4_0(b):
    return _d16(b[:, :2]) * (_nibbles32(b[:, 2:]).astype(_F) - _F(8))


def _dq4_1(b):
    return _d16(b[:, :2]) * _nibbles32(b[:, 4:]).astype(_F) + _d16(b[:, 2:4])


def _qh_bits(qh):
    return np.unpackbits(qh, axis=1, bitorder="little")          # (N, 32) bit j = element j


def _dq5_0(b):
    q = _nibbles32(b[:, 6:]) | (_qh_bits(b[:, 2:6]) << 4)
    return _d16(b[:, :2]) * (q.astype(_F) - _F(16))


def _dq5_1(b):
    q = _nibbles32(b[:, 8:]) | (_qh_bits(b[:, 4:8]) << 4)
    return _d16(b[:, :2]) * q.astype(_F) + _d16(b[:, 2:4])


def _unpack_2bit(qs):
    """(N, 64) -> (N, 256) inverse of _pack_2bit."""
    n = qs.shape[0]
    q = qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(n, QK_K)


def _dq2_k(b):
    n = b.shape[0]
    sc, q = b[:, :16], _unpack_2bit(b[:, 16:80]).astype(_F).reshape(n, 16, 16)
    dl = (_d16(b[:, 80:82]) * (sc & 0xF).astype(_F))[..., None]
    ml = (_d16(b[:, 82:84]) * (sc >> 4).astype(_F))[..., None]
    return (dl * q - ml).reshape(n, QK_K)


def _dq3_k(b):
    n = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _d16(b[:, 108:110])
    low = np.concatenate([sc[:, :8] & 0xF, sc[:, :8] >> 4], axis=1)                        # (n, 16)
    high = (sc[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3
    l6 = low | (high.reshape(n, 16) << 4)
    dl = (d * (l6.astype(_F) - _F(32)))[..., None]
    hb = (hmask.reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1    # (n, 8, 32)
    q = _unpack_2bit(qs).astype(np.int8) - ((1 - hb.reshape(n, QK_K)) << 2).astype(np.int8)
    return (dl * q.astype(_F).reshape(n, 16, 16)).reshape(n, QK_K)


def _unpack_nibbles_64(qs):
    n = qs.shape[0]
    q = qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(n, 8, 32)


def _dq4_k(b):
    n = b.shape[0]
    sc, mn = _unpack_k4_scales(b[:, 4:16])
    dl = (_d16(b[:, 0:2]) * sc.astype(_F))[..., None]
    ml = (_d16(b[:, 2:4]) * mn.astype(_F))[..., None]
    return (dl * _unpack_nibbles_64(b[:, 16:]).astype(_F) - ml).reshape(n, QK_K)


def _dq5_k(b):
    n = b.shape[0]
    sc, mn = _unpack_k4_scales(b[:, 4:16])
    dl = (_d16(b[:, 0:2]) * sc.astype(_F))[..., None]
    ml = (_d16(b[:, 2:4]) * mn.astype(_F))[..., None]
    hb = (b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    q = _unpack_nibbles_64(b[:, 48:]) | (hb << 4)
    return (dl * q.astype(_F) - ml).reshape(n, QK_K)


def _dq6_k(b):
    n = b.shape[0]
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), _d16(b[:, 208:210])
    lo = (ql.reshape(n, 2, 1, 2, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1, 1)) & 0xF  # [c, s, half]
    hi = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3    # [c, k]
    q = (lo.reshape(n, 2, 4, 32) | (hi << 4)).astype(np.int8) - np.int8(32)
    dl = (d * sc.astype(_F))[..., None]
    return (dl * q.astype(_F).reshape(n, 16, 16)).reshape(n, QK_K)


_DEQUANTIZERS = {
    QT.F32: _dq_f32, QT.F16: _dq_f16, QT.BF16: _dq_bf16, QT.Q8_0: _dq8_0,
    QT.Q4_0: _dq4_0, QT.Q4_1: _dq4_1, QT.Q5_0: _dq5_0, QT.Q5_1: _dq5_1,
    QT.Q2_K: _dq2_k, QT.Q3_K: _dq3_k, QT.Q4_K: _dq4_k, QT.Q5_K: _dq5_k, QT.Q6_K: _dq6_k,
}


# ------------------------------------------------------------------------------------------------- public API

def _check(qtype) -> QT:
    qtype = QT(qtype)
    if qtype not in _QUANTIZERS:
        raise NotImplementedError(f"quantization to {qtype.name} is not implemented; "
                                  f"supported: {', '.join(t.name for t in SUPPORTED)}")
    return qtype


def quantize(data: np.ndarray, qtype: QT) -> np.ndarray:
    """Quantize a float tensor (any shape; rows on the last axis, which must be a multiple of the block size) to
    `qtype`. Returns uint8 of shape byte_shape(data.shape, qtype): ready for GGUFWriter.add_tensor(name, raw,
    raw_dtype=qtype) or write_tensor_data, and readable by llama.cpp and gguf.quants.dequantize. Block types reject
    inf/NaN with ValueError (llama-quantize refuses them too)."""
    qtype = _check(qtype)
    data = np.asarray(data)
    out_shape = byte_shape(data.shape, qtype)
    bs, ts = GGML_QUANT_SIZES[qtype]
    blocks = np.ascontiguousarray(data, dtype=_F).reshape(-1, bs)
    out = np.empty((blocks.shape[0], ts), np.uint8)
    step = max(1, _CHUNK_ELEMS // bs)
    fn = _QUANTIZERS[qtype]
    check = bs > 1                                   # F32/F16/BF16 store inf/NaN as they are
    with np.errstate(all="ignore"):
        for i in range(0, blocks.shape[0], step):
            chunk = blocks[i:i + step]
            if check and not np.isfinite(chunk).all():
                raise ValueError(f"cannot quantize non-finite values (inf/NaN) to {qtype.name}")
            out[i:i + step] = fn(chunk)
    return out.reshape(out_shape)


def dequantize(raw: np.ndarray, qtype: QT, shape: Sequence[int] | None = None) -> np.ndarray:
    """Bytes from `quantize` (or a GGUF file) back to float32, shaped `shape` (default: from raw's byte shape)."""
    qtype = _check(qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    bs, ts = GGML_QUANT_SIZES[qtype]
    if shape is None:
        if raw.shape[-1] % ts:
            raise ValueError(f"{raw.shape[-1]} bytes per row is not a multiple of {qtype.name}'s {ts}-byte block")
        shape = (*raw.shape[:-1], raw.shape[-1] // ts * bs)
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    if n % bs or raw.size != n // bs * ts:
        raise ValueError(f"{raw.size} bytes do not hold a {qtype.name} tensor of shape {shape}")
    out = np.empty((n // bs, bs), _F)
    blocks = raw.reshape(-1, ts)
    step = max(1, _CHUNK_ELEMS // bs)
    fn = _DEQUANTIZERS[qtype]
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = fn(blocks[i:i + step])
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------------- type mixes

PLAIN = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1,
         "q5_0": QT.Q5_0, "q5_1": QT.Q5_1, "q2_k": QT.Q2_K, "q3_k": QT.Q3_K, "q4_k": QT.Q4_K, "q5_k": QT.Q5_K,
         "q6_k": QT.Q6_K}
MIXES = {"q3_k_m": QT.Q3_K, "q4_k_m": QT.Q4_K, "q5_k_m": QT.Q5_K}   # mix -> llama.cpp's default type for it
QUANT_NAMES = tuple(PLAIN) + tuple(MIXES)

_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
               "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0,
               "q4_1": LlamaFileType.MOSTLY_Q4_1, "q5_0": LlamaFileType.MOSTLY_Q5_0,
               "q5_1": LlamaFileType.MOSTLY_Q5_1, "q2_k": LlamaFileType.MOSTLY_Q2_K,
               "q3_k": LlamaFileType.MOSTLY_Q3_K_S, "q4_k": LlamaFileType.MOSTLY_Q4_K_S,
               "q5_k": LlamaFileType.MOSTLY_Q5_K_S, "q6_k": LlamaFileType.MOSTLY_Q6_K,
               "q3_k_m": LlamaFileType.MOSTLY_Q3_K_M, "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
               "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M}

# llama.cpp's tensor_type_fallback (src/llama-quant.cpp), restricted to our types: when a row is not a whole
# number of 256-blocks, a K-quant falls back to a 32-block type; if even that does not fit, F16.
_FALLBACK = {QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}

_LAYER = re.compile(r"^blk\.(\d+)\.")


def _check_mix(mix: str) -> str:
    key = mix.lower()
    if key not in PLAIN and key not in MIXES:
        raise ValueError(f"unknown GGUF quant {mix!r}; valid: {', '.join(QUANT_NAMES)}")
    return key


def file_type(mix: str) -> int:
    """general.file_type (llama_ftype) to record for a mix, as llama-quantize writes it."""
    return int(_FILE_TYPES[_check_mix(mix)])


def _quantizable(name: str, shape: Sequence[int]) -> bool:
    """llama.cpp's tensor_allows_quantization for the tensors a dense decoder has: 2-D+ `*weight` tensors except
    norms, MoE routers and position / token-type embeddings."""
    return (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name and name not in ("position_embd.weight", "token_types.weight")
            and "attn_rel_b.weight" not in name and "ssm_conv1d" not in name)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # llama.cpp: the first and last eighth of the layers, and every third one in between
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _fallback(qtype: QT, cols: int) -> QT:
    if cols % block_size(qtype) == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, qtype)
    return qtype if cols % block_size(qtype) == 0 else QT.F16


def tensor_type(name: str, shape: Sequence[int], mix: str, n_layers: int, *,
                tied_embeddings: bool = False) -> QT:
    """The GGUF type for tensor `name` (a GGUF name: token_embd.weight, blk.N.attn_v.weight, output.weight, ...)
    of numpy `shape` (rows last: shape[-1] is ggml's ne[0], the row length) under `mix`.

    1-D tensors (norms, biases) and tensors llama.cpp never quantizes are F32. Plain names ("q4_0", "q6_k", "f16",
    ...) give every other tensor that type, like `llama-quantize --pure`. The mixes follow llama.cpp's
    llama_tensor_get_type for a dense (non-MoE, non-Falcon) model: output.weight (and token_embd.weight when the
    embeddings are tied, i.e. there is no output.weight) Q6_K; attn_v (and fused attn_qkv) and ffn_down more bits
    on the `use_more_bits` layers (q4_k_m, q5_k_m: Q6_K) or on the first layers (q3_k_m: Q5_K), q3_k_m also Q4_K
    for attn_output and the other attn_v / ffn_down. Rows that are not a whole number of the type's blocks fall
    back as llama.cpp's tensor_type_fallback does (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
    then F16 if even 32 does not divide)."""
    key = _check_mix(mix)
    if not _quantizable(name, shape):
        return QT.F32
    cols = int(shape[-1])
    if key in PLAIN:
        return _fallback(PLAIN[key], cols)
    default = MIXES[key]
    new = default
    m = _LAYER.match(name)
    layer = int(m.group(1)) if m else 0
    is_output = name == "output.weight"
    is_embd = name in ("token_embd.weight", "per_layer_token_embd.weight")
    if is_output or (tied_embeddings and is_embd):
        # llama.cpp: Q8_0 if the row does not fit the mix's default block, else Q6_K (the mix types are not Q8_0)
        return _fallback(QT.Q8_0 if cols % block_size(default) else QT.Q6_K, cols)
    if is_embd:
        pass                                                  # no special case for these mixes
    elif "attn_qkv.weight" in name or "attn_kv_b.weight" in name or "attn_v.weight" in name:
        # category_is_attn_v; i_attention_wv counts these tensors in layer order (= the layer for a dense model)
        if key == "q3_k_m":
            new = QT.Q5_K if layer < 2 else QT.Q4_K
        elif _use_more_bits(layer, n_layers):
            new = QT.Q6_K
    elif "attn_k.weight" in name or "attn_q.weight" in name:
        pass
    elif "attn_output.weight" in name:
        if key == "q3_k_m":
            new = QT.Q4_K
    elif "ffn_up" in name or "ffn_gate" in name:
        pass
    elif "ffn_down" in name:
        if key == "q3_k_m":
            new = QT.Q5_K if layer < n_layers // 16 else QT.Q4_K
        elif _use_more_bits(layer, n_layers):
            new = QT.Q6_K
    return _fallback(new, cols)
