"""Triton kernels for quantized linear layers: y = x @ W.T (+ LoRA + bias), dx = dy @ W, and W itself.

W [N, K] arrives packed in one of the formats of docs/quantization.md (int8, fp8, int4, nf4: the (packed,
scales, aux, fmt, group, N, K) contract) and is never materialised: each program loads a packed [BLOCK_N,
BLOCK_K] tile and dequantizes it in registers (`_weight_tile`, shared by the three kernels).

Scales: int8/fp8 (per row) and int4 (per row and group; BLOCK_K divides G, so a K tile lies in one group) are
applied after the dot in the forward, so 16-bit dots see the exact integer / fp8 values; nf4's absmax (64-element
blocks of the flattened weight, which may span two rows) is applied in the tile. fp8 is decoded from its bits
with integer ops (no fp8 hardware conversion needed, e.g. on sm_80). Masks are built from blocks only (see
dispatch.py's interpreter caveats); interpreted bf16 dots are upcast (`_dot`).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from slipstream.kernels.quant_formats import ABSMAX_BLOCK, NF4_BLOCK, NF4_CODE
from slipstream.kernels.triton_attention import _dot, last_dim_contiguous, precision
from slipstream.kernels.triton_utils import as_rows, cdiv, launch_guard, next_power_of_2

INT8 = tl.constexpr(0)
FP8 = tl.constexpr(1)
INT4 = tl.constexpr(2)
NF4 = tl.constexpr(3)
_FMT = {"int8": INT8.value, "fp8": FP8.value, "int4": INT4.value, "nf4": NF4.value}
_codebooks: dict[torch.device, torch.Tensor] = {}
NF4_TREE = True  # nf4 codebook lookup: select tree (True) or tl.gather (False); see benchmarks/lora_linear_tune.py


def _codebook(device: torch.device) -> torch.Tensor:
    """The 16-entry fp32 NF4 table, created once per device; each tile loads it into registers (`tl.gather`)."""
    table = _codebooks.get(device)
    if table is None:
        table = _codebooks[device] = NF4_CODE.to(device)
    return table


@triton.jit
def _fp8_e4m3(b):
    """float8_e4m3fn bits (uint8) -> fp32: exponent bias 7, subnormals m * 2^-9, 0x7f/0xff NaN, no inf."""
    b = b.to(tl.int32)
    e = (b >> 3) & 15
    m = b & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    mag = tl.where((b & 127) == 127, float("nan"), mag)
    return tl.where((b & 128) != 0, -mag, mag)


@triton.jit
def _nf4_absmax(S, A, blk, valid, DQ: tl.constexpr):
    """absmax of nf4 blocks `blk`: fp32 scales, or double quant map[code] * absmax2[blk // 256] + offset."""
    if DQ:
        code = tl.load(S + blk, mask=valid, other=0).to(tl.int32)
        absmax2 = tl.load(A + 257 + blk // 256, mask=valid, other=0.0)
        absmax = tl.load(A + code, mask=valid, other=0.0) * absmax2 + tl.load(A + 256)
    else:
        absmax = tl.load(S + blk, mask=valid, other=0.0)
    return absmax


@triton.jit
def _nf4_code(CB, idx, TREE: tl.constexpr):
    """The NF4 codebook value of each 4-bit index: a select tree over the 16 scalars (registers only), or
    tl.gather from a per-row copy of the table."""
    if TREE:
        b0 = (idx & 1) != 0
        b1 = (idx & 2) != 0
        b2 = (idx & 4) != 0
        q0 = tl.where(b1, tl.where(b0, tl.load(CB + 3), tl.load(CB + 2)), tl.where(b0, tl.load(CB + 1), tl.load(CB)))
        q1 = tl.where(b1, tl.where(b0, tl.load(CB + 7), tl.load(CB + 6)),
                      tl.where(b0, tl.load(CB + 5), tl.load(CB + 4)))
        q2 = tl.where(b1, tl.where(b0, tl.load(CB + 11), tl.load(CB + 10)),
                      tl.where(b0, tl.load(CB + 9), tl.load(CB + 8)))
        q3 = tl.where(b1, tl.where(b0, tl.load(CB + 15), tl.load(CB + 14)),
                      tl.where(b0, tl.load(CB + 13), tl.load(CB + 12)))
        code = tl.where((idx & 8) != 0, tl.where(b2, q3, q2), tl.where(b2, q1, q0))
    else:
        table = tl.broadcast_to(tl.load(CB + tl.arange(0, 16))[None, :], (idx.shape[0], 16))
        code = tl.gather(table, idx, 1)
    return code


@triton.jit
def _weight_tile(P, S, A, CB, rn, k0, rk, N, K, stride_p, n_groups, group,
                 FMT: tl.constexpr, DQ: tl.constexpr, ASYM: tl.constexpr, ALIGNED: tl.constexpr,
                 TREE: tl.constexpr):
    """fp32 W[rn, rk] tile [BLOCK_N, BLOCK_K] (finite, not necessarily 0, outside [N, K]: the callers mask the
    other operand or the store) WITHOUT the int8/fp8/int4 scale (`_tile_scale` gives it); nf4 comes with its
    absmax applied. int4: the tile's columns lie in one group. nf4: BLOCK_K <= 64 and n_groups = number of
    absmax blocks. Per-row values (zeros, scales, absmax) are [BLOCK_N] loads, never per-element gathers: on GPU
    the pipeliner would stage per-element fp32 gathers in shared memory."""
    rows = rn.to(tl.int64)[:, None]
    cols = rk[None, :]
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    if FMT == INT8:
        w = tl.load(P + rows * stride_p + cols, mask=mask, other=0).to(tl.float32)
    elif FMT == FP8:
        w = _fp8_e4m3(tl.load(P + rows * stride_p + cols, mask=mask, other=0))
    elif FMT == INT4:
        byte = tl.load(P + rows * stride_p + (cols >> 1), mask=mask, other=0).to(tl.int32)
        u = ((byte >> ((cols & 1) * 4)) & 15).to(tl.float32)  # low nibble first
        if ASYM:
            z = tl.load(A + rn.to(tl.int64) * n_groups + k0 // group, mask=rn < N, other=0).to(tl.float32)
            w = u - z[:, None]
        else:
            w = u - 8.0
    elif ALIGNED:  # NF4 with K % 64 == 0: a row's tile is BLOCK_K / 2 whole bytes in one absmax block
        half = k0 // 2 + tl.arange(0, rk.shape[0] // 2)
        byte = tl.load(P + rows * (K // 2) + half[None, :], mask=(rn[:, None] < N) & (half[None, :] < K // 2),
                       other=0).to(tl.int32)
        absmax = _nf4_absmax(S, A, rn.to(tl.int64) * (K // 64) + k0 // 64, rn < N, DQ)[:, None]
        # Whole-byte loads and a join of the two nibbles' values: 3x faster on an H200 than one load per
        # element (benchmarks/nf4_probe.py). High nibble first.
        hi = _nf4_code(CB, byte >> 4, TREE) * absmax
        lo = _nf4_code(CB, byte & 15, TREE) * absmax
        w = tl.reshape(tl.join(hi, lo), (rn.shape[0], rk.shape[0]))
    else:  # NF4: flat index f = n*K + k, two per byte, high nibble first
        f = rows * K + cols
        byte = tl.load(P + (f >> 1), mask=mask, other=0).to(tl.int32)
        idx = (byte >> ((1 - (f & 1)) * 4).to(tl.int32)) & 15
        code = _nf4_code(CB, idx, TREE)
        # A row's BLOCK_K <= 64 consecutive flat elements touch at most two 64-element blocks.
        first = (rn.to(tl.int64) * K + k0) // 64
        lo = _nf4_absmax(S, A, first, rn < N, DQ)
        hi = _nf4_absmax(S, A, first + 1, (rn < N) & (first + 1 < n_groups), DQ)
        w = code * tl.where(f // 64 == first[:, None], lo[:, None], hi[:, None])
    return w


@triton.jit
def _tile_scale(S, rn, k0, N, n_groups, group, FMT: tl.constexpr):
    """[BLOCK_N] fp32 scales of rows rn: per row (int8/fp8) or of group k0 // group (int4). Not for nf4."""
    if FMT == INT4:
        scale = tl.load(S + rn.to(tl.int64) * n_groups + k0 // group, mask=rn < N, other=0.0)
    else:
        scale = tl.load(S + rn, mask=rn < N, other=0.0)
    return scale


@triton.jit
def _swizzle(pid, tiles_a, tiles_b, GROUP: tl.constexpr):
    """Tutorial grouped ordering: GROUP consecutive a-tiles share each b-tile (L2 reuse)."""
    width = GROUP * tiles_b
    first = (pid // width) * GROUP
    size = tl.minimum(tiles_a - first, GROUP)
    return first + (pid % width) % size, (pid % width) // size


@triton.jit
def _qmm_kernel(
    X, P, S, A, CB, XA, LB, BIAS, Y, M, N, K, R, stride_xm, stride_p, n_groups, group, stride_am, stride_bn,
    FMT: tl.constexpr, DQ: tl.constexpr, ASYM: tl.constexpr, ALIGNED: tl.constexpr, TREE: tl.constexpr,
    HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _swizzle(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    xrows = rm.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + xrows + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w = _weight_tile(P, S, A, CB, rn, k0, rk, N, K, stride_p, n_groups, group, FMT, DQ, ASYM, ALIGNED, TREE)
        part = _dot(x, tl.trans(w.to(X.dtype.element_ty)), PRECISION)
        if FMT == INT4:
            acc += part * _tile_scale(S, rn, k0, N, n_groups, group, FMT)[None, :]
        else:
            acc += part
    if FMT == INT8 or FMT == FP8:
        acc = acc * _tile_scale(S, rn, 0, N, n_groups, group, FMT)[None, :]
    if HAS_LORA:
        arows = rm.to(tl.int64)[:, None] * stride_am
        brows = rn.to(tl.int64)[:, None] * stride_bn
        for r0 in range(0, R, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            xa = tl.load(XA + arows + rr[None, :], mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)
            lb = tl.load(LB + brows + rr[None, :], mask=(rn[:, None] < N) & (rr[None, :] < R), other=0.0)
            acc += _dot(xa.to(X.dtype.element_ty), tl.trans(lb.to(X.dtype.element_ty)), PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    ymask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(Y + rm.to(tl.int64)[:, None] * N + rn[None, :], acc.to(Y.dtype.element_ty), mask=ymask)


@triton.jit
def _qmm_t_kernel(
    DY, P, S, A, CB, DX, M, N, K, stride_dym, stride_p, n_groups, group,
    FMT: tl.constexpr, DQ: tl.constexpr, ASYM: tl.constexpr, ALIGNED: tl.constexpr, TREE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_k = _swizzle(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = pid_k * BLOCK_K
    rk = k0 + tl.arange(0, BLOCK_K)
    dyrows = rm.to(tl.int64)[:, None] * stride_dym
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        dy = tl.load(DY + dyrows + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
        w = _weight_tile(P, S, A, CB, rn, k0, rk, N, K, stride_p, n_groups, group, FMT, DQ, ASYM, ALIGNED, TREE)
        if FMT != NF4:
            w = w * _tile_scale(S, rn, k0, N, n_groups, group, FMT)[:, None]
        acc += _dot(dy, w.to(DY.dtype.element_ty), PRECISION)
    dxmask = (rm[:, None] < M) & (rk[None, :] < K)
    tl.store(DX + rm.to(tl.int64)[:, None] * K + rk[None, :], acc.to(DX.dtype.element_ty), mask=dxmask)


@triton.jit
def _dequant_kernel(
    P, S, A, CB, W, N, K, stride_p, n_groups, group,
    FMT: tl.constexpr, DQ: tl.constexpr, ASYM: tl.constexpr, ALIGNED: tl.constexpr, TREE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    rk = k0 + tl.arange(0, BLOCK_K)
    w = _weight_tile(P, S, A, CB, rn, k0, rk, N, K, stride_p, n_groups, group, FMT, DQ, ASYM, ALIGNED, TREE)
    if FMT != NF4:
        w = w * _tile_scale(S, rn, k0, N, n_groups, group, FMT)[:, None]
    mask = (rn[:, None] < N) & (rk[None, :] < K)
    tl.store(W + rn.to(tl.int64)[:, None] * K + rk[None, :], w.to(W.dtype.element_ty), mask=mask)


def _weight_args(packed, scales, aux, fmt: str, group: int, n: int, k: int) -> tuple[tuple, dict]:
    """Check the triple against docs/quantization.md; (pointer/stride args, format constexprs) for the kernels."""
    if fmt not in _FMT:
        raise ValueError(f"unknown quantized weight format {fmt!r}; known: {sorted(_FMT)}")
    n_groups, dq, asym = 1, False, False
    if fmt in ("int8", "fp8"):
        want = torch.int8 if fmt == "int8" else torch.float8_e4m3fn
        ok = packed.dtype == want and packed.shape == (n, k) and scales.shape == (n,)
    elif fmt == "int4":
        if group <= 0 or group % 16:
            raise ValueError(f"int4 group size must be a positive multiple of 16, got {group}")
        kp = cdiv(k, group) * group
        n_groups, asym = kp // group, aux.numel() > 0
        ok = packed.dtype == torch.uint8 and packed.shape == (n, kp // 2) and scales.shape == (n, n_groups)
        ok = ok and (not asym or (aux.dtype == torch.uint8 and aux.shape == (n, n_groups)))
    else:
        n_groups = nb = cdiv(n * k, NF4_BLOCK)
        dq = scales.dtype == torch.uint8
        ok = group == NF4_BLOCK and packed.dtype == torch.uint8 and packed.shape == (cdiv(n * k, 2),)
        ok = ok and scales.shape == (nb,) and (not dq or (aux.dtype == torch.float32
                                                          and aux.shape == (257 + cdiv(nb, ABSMAX_BLOCK),)))
    if not ok or scales.dtype not in (torch.float32, torch.uint8) or (fmt != "nf4" and scales.dtype != torch.float32):
        raise ValueError(f"{fmt} weight [{n}, {k}] (group {group}) does not match docs/quantization.md: packed "
                         f"{packed.dtype} {tuple(packed.shape)}, scales {scales.dtype} {tuple(scales.shape)}, "
                         f"aux {aux.dtype} {tuple(aux.shape)}")
    packed = packed.contiguous()
    if fmt == "fp8":
        packed = packed.view(torch.uint8)  # decoded from bits in the kernel
    scales = scales.contiguous()
    aux = aux.contiguous() if aux.numel() else scales  # never read when empty
    cb = _codebook(packed.device) if fmt == "nf4" else scales
    stride_p = packed.stride(0) if packed.dim() == 2 else 0
    return (packed, scales, aux, cb), dict(stride_p=stride_p, n_groups=n_groups, group=max(group, 1),
                                           FMT=_FMT[fmt], DQ=dq, ASYM=asym,
                                           ALIGNED=fmt == "nf4" and k % NF4_BLOCK == 0, TREE=NF4_TREE)


def _format_args(wkw: dict) -> dict:
    """The weight format's constexpr arguments, as every kernel here takes them."""
    return {name: wkw[name] for name in ("FMT", "DQ", "ASYM", "ALIGNED", "TREE")}


def _block_k(fmt: str, group: int, block_k: int) -> int:
    """BLOCK_K, capped so it divides the int4 group (a K tile then lies in one group) and at most nf4's block."""
    while fmt == "int4" and group % block_k:
        block_k //= 2
    return min(block_k, NF4_BLOCK) if fmt == "nf4" else block_k


def _mm_config(m: int, dtype: torch.dtype, device: torch.device) -> tuple[int, ...]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), BLOCK_K before `_block_k`. Not yet swept on a GPU.

    Decode (M <= 16) streams the weight: 16-row tiles (tl.dot's minimum), narrow BLOCK_N so N = 4096 still gives
    128 programs, long K steps. Bigger M: 64- then 128-square tiles as in Triton's matmul tutorial; fp32 (ieee
    dots, no tensor cores) smaller. The interpreter (CPU) runs programs serially: tiles that still give several
    tiles per dim on the test shapes (exercising the masks) without many tiny programs."""
    if device.type == "cpu":
        return max(16, min(64, next_power_of_2(m))), 32, 32, 4, 1
    if dtype == torch.float32:
        return (16 if m <= 16 else 64), 64, 32, 4, 2
    if m <= 16:
        return 16, 32, 128, 4, 4
    if m <= 64:
        return max(32, next_power_of_2(m)), 64, 64, 4, 4
    return 128, 128, 64, 8, 3


def _lora_args(lora_xa, lora_b, m: int, n: int, x: torch.Tensor) -> tuple:
    if (lora_xa is None) != (lora_b is None):
        raise ValueError("quant_matmul: pass both lora_xa and lora_b, or neither")
    if lora_xa is None:
        return x, x, 0, 0, 0
    xa, b = as_rows(lora_xa), last_dim_contiguous(lora_b)
    r = xa.shape[-1]
    if xa.shape != (m, r) or b.shape != (n, r):
        raise ValueError(f"quant_matmul: lora_xa {tuple(lora_xa.shape)} / lora_b {tuple(lora_b.shape)} do not "
                         f"match x rows {m}, out features {n}")
    return xa, b, r, xa.stride(0), b.stride(0)


def _prologue(op: str, a: torch.Tensor, reduced: int, out: int, weight: tuple):
    """(a as rows, the empty [rows, out] result, the weight's launch arguments) after checking a's last dim."""
    if a.shape[-1] != reduced:
        raise ValueError(f"{op}: input last dim {a.shape[-1]} != {reduced}, the weight's matching dimension")
    a2 = as_rows(a)
    result = torch.empty((a2.shape[0], out), dtype=a.dtype, device=a.device)
    return a2, result, (_weight_args(*weight) if result.numel() else (None, None))


def quant_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, aux: torch.Tensor, fmt: str,
                 group: int, n: int, k: int, lora_xa: Optional[torch.Tensor] = None,
                 lora_b: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y [..., N] (x's dtype) = x @ deq(W).T + lora_xa @ lora_b.T + bias, x [..., K].

    lora_xa [..., R] (already scaled) and lora_b [N, R] are optional together (their tiles are cast to x's
    dtype for the dot); bias [N] optional. fp32 accumulation; fp32 x uses true fp32 (ieee) dots."""
    x2, y, (wargs, wkw) = _prologue("quant_matmul", x, k, n, (packed, scales, aux, fmt, group, n, k))
    if y.numel() == 0:
        return y.reshape(*x.shape[:-1], n)
    m = x2.shape[0]
    xa, b, r, stride_am, stride_bn = _lora_args(lora_xa, lora_b, m, n, x2)
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"quant_matmul: bias shape {tuple(bias.shape)} != ({n},)")
    bias_t = x2 if bias is None else bias.contiguous()
    block_m, block_n, block_k, warps, stages = _mm_config(m, x.dtype, x.device)
    block_k = _block_k(fmt, group, block_k)
    block_r = max(16, min(64, next_power_of_2(max(r, 1))))
    grid = (cdiv(m, block_m) * cdiv(n, block_n),)
    with launch_guard(_qmm_kernel, x):
        _qmm_kernel[grid](
            x2, *wargs, xa, b, bias_t, y, m, n, k, r, x2.stride(0), wkw["stride_p"], wkw["n_groups"], wkw["group"],
            stride_am, stride_bn, **_format_args(wkw), HAS_LORA=r > 0, HAS_BIAS=bias is not None,
            PRECISION=precision(x), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=block_r,
            GROUP_M=8, num_warps=warps, num_stages=stages,
        )
    return y.reshape(*x.shape[:-1], n)


def quant_matmul_t(dy: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, aux: torch.Tensor, fmt: str,
                   group: int, n: int, k: int) -> torch.Tensor:
    """dx [..., K] (dy's dtype) = dy @ deq(W), dy [..., N]: the input gradient of quant_matmul (no LoRA part)."""
    dy2, dx, (wargs, wkw) = _prologue("quant_matmul_t", dy, n, k, (packed, scales, aux, fmt, group, n, k))
    if dx.numel() == 0:
        return dx.reshape(*dy.shape[:-1], k)
    m = dy2.shape[0]
    # Same tiles as the forward with N and K swapped: [BLOCK_M, BLOCK_K] outputs, N reduced in BLOCK_N steps.
    block_m, block_k, block_n, warps, stages = _mm_config(m, dy.dtype, dy.device)
    block_k = _block_k(fmt, group, block_k)
    grid = (cdiv(m, block_m) * cdiv(k, block_k),)
    with launch_guard(_qmm_t_kernel, dy):
        _qmm_t_kernel[grid](
            dy2, *wargs, dx, m, n, k, dy2.stride(0), wkw["stride_p"], wkw["n_groups"], wkw["group"],
            **_format_args(wkw), PRECISION=precision(dy), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            GROUP_M=8, num_warps=warps, num_stages=stages,
        )
    return dx.reshape(*dy.shape[:-1], k)


def dequantize(packed: torch.Tensor, scales: torch.Tensor, aux: torch.Tensor, fmt: str, group: int, n: int, k: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W [N, K] in `dtype`, computed in fp32 (bit-equal to the reference dequantization in fp32)."""
    out = torch.empty((n, k), dtype=dtype, device=packed.device)
    if out.numel() == 0:
        return out
    wargs, wkw = _weight_args(packed, scales, aux, fmt, group, n, k)
    block_n, block_k = (32, _block_k(fmt, group, 32)) if out.device.type == "cpu" else (128, _block_k(fmt, group, 64))
    with launch_guard(_dequant_kernel, packed):
        # No fp fusion: nf4's double-quant absmax map * absmax2 + offset must round like the reference (no FMA).
        _dequant_kernel[(cdiv(n, block_n), cdiv(k, block_k))](
            *wargs, out, n, k, wkw["stride_p"], wkw["n_groups"], wkw["group"], **_format_args(wkw),
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, enable_fp_fusion=False,
        )
    return out
