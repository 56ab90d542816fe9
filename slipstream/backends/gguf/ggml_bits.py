"""ggml's number formats and rounding, shared by the GGUF quantizers and dequantizers (quants.py): fp16 scales,
C roundf and nearest_int, the K-quants' bit packings, and the sequential per-group sums that keep float32 results
in ggml's operation order. Names keep their leading underscore: they are internal to the quantization modules.
"""
from __future__ import annotations

import numpy as np

QK_K = 256
_F = np.float32
_EPS = _F(1e-15)             # ggml's GROUP_MAX_EPS: a group whose largest |x| is below it is all zero


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
