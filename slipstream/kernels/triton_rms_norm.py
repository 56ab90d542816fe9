"""Triton kernels for RMSNorm: one row per program forward, grid-stride rows backward (fp32 math throughout)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_utils import as_rows, launch_guard, persistent_programs, row_block, row_warps


@triton.jit
def _rms_norm_fwd_kernel(
    X, W, Y, stride_x, stride_y, N, eps, offset,
    CAST_FIRST: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    n = x * rstd
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if CAST_FIRST:
        # Both operands rounded as eager rounds them (offset added in weight's dtype, n cast to x's dtype); their
        # fp32 product is exact for 16-bit operands, so the store performs eager's single final rounding.
        w = (w + offset).to(W.dtype.element_ty).to(tl.float32)
        y = n.to(X.dtype.element_ty).to(tl.float32) * w
    else:
        y = n * (w + offset)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, X, W, DX, DW, stride_dy, stride_x, stride_dx, M, N, eps, offset, rows_per_program,
    HAS_DW: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for row in range(first, last):
        r = row.to(tl.int64)
        x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / N + eps)  # recomputed: cheaper than a saved [M] tensor
        n = x * rstd
        gw = dy * w
        dx = rstd * (gw - n * (tl.sum(gw * n, axis=0) / N))
        tl.store(DX + r * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_DW:
            dw += dy * n
    if HAS_DW:
        # Per-program fp32 partials; the host sums them (deterministic, no atomics).
        tl.store(DW + pid.to(tl.int64) * N + cols, dw, mask=mask)


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float, cast_first: bool, dtype: torch.dtype
) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    if x.numel() == 0:
        return out
    x2, n = as_rows(x), x.shape[-1]
    block = row_block(n, "rms_norm")
    with launch_guard(_rms_norm_fwd_kernel, x):
        _rms_norm_fwd_kernel[(x2.shape[0],)](
            x2, weight, out, x2.stride(0), n, n, eps, offset,
            CAST_FIRST=cast_first, BLOCK_N=block, num_warps=row_warps(block),
        )
    return out


def rms_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float, compute_weight_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n = x.shape[-1]
    if x.numel() == 0:
        return grad_x, torch.zeros_like(weight) if compute_weight_grad else weight.new_empty(0)
    x2, g2 = as_rows(x), as_rows(grad)
    m, block = x2.shape[0], row_block(n, "rms_norm")
    programs = persistent_programs(x, m)
    partial = torch.empty((programs, n) if compute_weight_grad else (1,), dtype=torch.float32, device=x.device)
    with launch_guard(_rms_norm_bwd_kernel, x):
        _rms_norm_bwd_kernel[(programs,)](
            g2, x2, weight, grad_x, partial, g2.stride(0), x2.stride(0), n, m, n, eps, offset,
            triton.cdiv(m, programs), HAS_DW=compute_weight_grad, BLOCK_N=block, num_warps=row_warps(block),
        )
    grad_w = partial.sum(0).to(weight.dtype) if compute_weight_grad else weight.new_empty(0)
    return grad_x, grad_w
