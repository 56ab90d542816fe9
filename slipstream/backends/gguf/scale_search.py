"""ggml's per-group scale searches (ggml/src/ggml-quants.c: make_qkx2_quants, make_qx_quants, make_q3_quants),
vectorised over all groups of a tensor at once, in ggml's float32 operation order (see quants.py).

Groups lie along axis 1: x is (group length, number of groups), C-contiguous, so that per-group sums are
_colsum's sequential ones and each step of a search is a handful of whole-array operations.
"""
from __future__ import annotations

import numpy as np

from .ggml_bits import QK_K, _EPS, _F, _colsum, _levels, _rint, _safe, _signed_absmax


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
