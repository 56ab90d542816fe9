"""ggml's block dequantizers (`dequantize_row_*`), one per GGUF type: the bytes of a block back to float32 in
ggml's operation order, so results agree with llama.cpp and gguf.quants to the bit. Each takes uint8 blocks
(N, type_size) and returns float32 (N, block_size).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT

from .ggml_bits import QK_K, _F, _unpack_k4_scales


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
