"""Triton kernels for gated activations act(gate) * up (act: silu, erf gelu, tanh gelu), forward and backward.

2-D tiles over [rows, cols] with per-tensor row strides, so Phi-3's `gate, up = x.chunk(2, -1)` views (unit
last-dim stride, row stride 2*I) are read in place. Outputs are contiguous.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from slipstream.kernels.triton_utils import as_rows, cdiv, launch_guard, next_power_of_2, warps_for

SILU = tl.constexpr(0)
GELU_ERF = tl.constexpr(1)
GELU_TANH = tl.constexpr(2)
_ACT = {None: SILU.value, "none": GELU_ERF.value, "tanh": GELU_TANH.value}

# Elements per program (at 8 warps: 16 values per thread per tensor).
_TILE = 4096
_MAX_BLOCK_N = 1024


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    """(act(g), d act / d g) in fp32. Tanh gelu uses 0.5*(1 + tanh(z)) == sigmoid(2z), which avoids tanh."""
    if ACT == SILU:
        e1 = 1.0 + tl.exp(-g)
        s = 1.0 / e1
        a = g / e1  # eager's silu formula, x / (1 + exp(-x))
        d = s * (1.0 + g * (1.0 - s))
    elif ACT == GELU_ERF:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        a = g * cdf
        d = cdf + g * (0.3989422804014327 * tl.exp(-0.5 * g * g))
    else:  # GELU_TANH
        beta = 0.7978845608028654  # sqrt(2 / pi)
        s = 1.0 / (1.0 + tl.exp(-2.0 * beta * (g + 0.044715 * g * g * g)))
        a = g * s
        d = s + 2.0 * g * s * (1.0 - s) * beta * (1.0 + 3.0 * 0.044715 * g * g)
    return a, d


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    return rows[:, None], cols[None, :], mask


@triton.jit
def _gated_fwd_kernel(
    G, U, Y, stride_g, stride_u, M, N,
    ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, cols, mask = _tile(M, N, BLOCK_M, BLOCK_N)
    g = tl.load(G + rows * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(g, ACT)
    # Eager rounds act(gate) to the input dtype before the product; the store rounds the product.
    a = a.to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + rows * N + cols, (a * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(
    DY, G, U, DG, DU, stride_dy, stride_g, stride_u, M, N,
    ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows, cols, mask = _tile(M, N, BLOCK_M, BLOCK_N)
    dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + rows * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    a, d = _act_and_grad(g, ACT)
    # Round where eager autograd rounds: act(gate) (saved in dtype) and grad * up (the activation's input grad).
    a = a.to(DU.dtype.element_ty).to(tl.float32)
    da = (dy * u).to(DG.dtype.element_ty).to(tl.float32)
    tl.store(DU + rows * N + cols, (dy * a).to(DU.dtype.element_ty), mask=mask)
    tl.store(DG + rows * N + cols, (da * d).to(DG.dtype.element_ty), mask=mask)


def _blocks(m: int, n: int) -> tuple[int, int, tuple[int, int]]:
    block_n = min(next_power_of_2(n), _MAX_BLOCK_N)
    block_m = max(1, min(next_power_of_2(m), _TILE // block_n))
    return block_m, block_n, (cdiv(m, block_m), cdiv(n, block_n))


def gated_forward(gate: torch.Tensor, up: torch.Tensor, approximate: Optional[str]) -> torch.Tensor:
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if gate.numel() == 0:
        return out
    g2, u2 = as_rows(gate), as_rows(up)
    m, n = g2.shape
    block_m, block_n, grid = _blocks(m, n)
    with launch_guard(_gated_fwd_kernel, gate):
        _gated_fwd_kernel[grid](
            g2, u2, out, g2.stride(0), u2.stride(0), m, n,
            ACT=_ACT[approximate], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps_for(block_m * block_n),
        )
    return out


def gated_backward(
    grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, approximate: Optional[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty_like(dgate)
    if gate.numel() == 0:
        return dgate, dup
    d2, g2, u2 = as_rows(grad), as_rows(gate), as_rows(up)
    m, n = g2.shape
    block_m, block_n, grid = _blocks(m, n)
    with launch_guard(_gated_bwd_kernel, gate):
        _gated_bwd_kernel[grid](
            d2, g2, u2, dgate, dup, d2.stride(0), g2.stride(0), u2.stride(0), m, n,
            ACT=_ACT[approximate], BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps_for(block_m * block_n),
        )
    return dgate, dup
