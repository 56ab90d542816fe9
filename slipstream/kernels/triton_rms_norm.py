"""Triton kernels for RMSNorm: row tiles per program forward, grid-stride row tiles backward (fp32 math)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_utils import as_rows, cdiv, launch_guard, persistent_programs, row_tile


@triton.jit
def _rms_norm_fwd_kernel(
    X, W, Y, stride_x, stride_y, M, N, eps, offset,
    CAST_FIRST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_N)[None, :]
    mask = (rows < M) & (cols < N)
    x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / N + eps)[:, None]
    n = x * rstd
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
    if CAST_FIRST:
        # Both operands rounded as eager rounds them (offset added in weight's dtype, n cast to x's dtype); their
        # fp32 product is exact for 16-bit operands, so the store performs eager's single final rounding.
        w = (w + offset).to(W.dtype.element_ty).to(tl.float32)
        y = n.to(X.dtype.element_ty).to(tl.float32) * w
    else:
        y = n * (w + offset)
    tl.store(Y + rows * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, X, W, DX, DW, stride_dy, stride_x, stride_dx, M, N, eps, offset, tiles_per_program,
    HAS_DW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)[None, :]
    w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32) + offset
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first = pid.to(tl.int64) * tiles_per_program
    for i in range(0, tiles_per_program):
        rows = ((first + i) * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
        mask = (rows < M) & (cols < N)
        x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / N + eps)[:, None]  # recomputed: cheaper than saving [M]
        n = x * rstd
        gw = dy * w
        dx = rstd * (gw - n * (tl.sum(gw * n, axis=1) / N)[:, None])
        tl.store(DX + rows * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_DW:
            dw += dy * n
    if HAS_DW:
        # Per-program fp32 partials; the host sums them (deterministic, no atomics).
        tl.store(DW + pid.to(tl.int64) * N + cols, tl.sum(dw, axis=0)[None, :], mask=cols < N)


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float, cast_first: bool, dtype: torch.dtype
) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    if x.numel() == 0:
        return out
    x2 = as_rows(x)
    m, n = x2.shape
    block_m, block_n, warps = row_tile(n, m, "rms_norm")
    with launch_guard(_rms_norm_fwd_kernel, x):
        _rms_norm_fwd_kernel[(cdiv(m, block_m),)](
            x2, weight, out, x2.stride(0), n, m, n, eps, offset,
            CAST_FIRST=cast_first, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        )
    return out


def rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float, compute_weight_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(weight) if compute_weight_grad else weight.new_empty(0)
    x2, g2 = as_rows(x), as_rows(grad)
    m, n = x2.shape
    block_m, block_n, warps = row_tile(n, m, "rms_norm")
    tiles = cdiv(m, block_m)
    # two programs per SM: one's row loads overlap the other's reductions (93 vs 135 us on an H200,
    # benchmarks/rms_norm_tune.py); more only grows the fp32 partial-dW buffer
    programs = persistent_programs(x, tiles, per_sm=2)
    partial = torch.empty((programs, n) if compute_weight_grad else (1,), dtype=torch.float32, device=x.device)
    with launch_guard(_rms_norm_bwd_kernel, x):
        _rms_norm_bwd_kernel[(programs,)](
            g2, x2, weight, grad_x, partial, g2.stride(0), x2.stride(0), n, m, n, eps, offset,
            cdiv(tiles, programs), HAS_DW=compute_weight_grad, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=warps,
        )
    grad_w = partial.sum(0).to(weight.dtype) if compute_weight_grad else weight.new_empty(0)
    return grad_x, grad_w
