"""Helpers shared by the kernel tests (comparisons use the per-dtype table in slipstream.debug.tolerance)."""
from __future__ import annotations

import contextlib

import torch

from slipstream.debug.tolerance import tolerance
from slipstream.kernels import force_triton_on_cpu

# "reference": the PyTorch path CPU tensors take by default; "triton": the GPU kernels under the interpreter.
IMPLS = ("reference", "triton")
DTYPES = (torch.float32, torch.bfloat16)


def impl_context(impl: str) -> contextlib.AbstractContextManager:
    return force_triton_on_cpu() if impl == "triton" else contextlib.nullcontext()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Compare in float64 with `dtype`'s tolerance; NaN never passes."""
    tol = tolerance(dtype)
    assert not actual.isnan().any(), "NaN in result"
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol.rtol, atol=tol.atol)


def randn(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Seeded (conftest) random values; the shift keeps e.g. norm weights away from zero."""
    return (torch.randn(*shape, dtype=torch.float64) * scale + shift).to(dtype)


def grads(out: torch.Tensor | tuple, inputs: list[torch.Tensor], grad_out: torch.Tensor | tuple) -> tuple:
    outs = out if isinstance(out, tuple) else (out,)
    gos = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    return torch.autograd.grad(outs, inputs, gos)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 leaf copy of t (requires grad), for the exact reference."""
    return t.detach().double().requires_grad_(True)
