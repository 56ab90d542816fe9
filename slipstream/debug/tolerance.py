"""Per-dtype numeric tolerances shared by tests, `verify=True` and the debug tools.

One table, so a tolerance is never invented at a call site. `rtol`/`atol` follow `torch.allclose`; `max_rel` is
the bound on max|a-b| / max|b| used for whole-model comparisons (logits, grads).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    max_rel: float


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-10, atol=1e-12, max_rel=1e-10),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-5, max_rel=1e-5),
    torch.float16: Tolerance(rtol=1e-2, atol=1e-2, max_rel=1e-2),
    torch.bfloat16: Tolerance(rtol=2e-2, atol=2e-2, max_rel=2e-2),
}


def tolerance(dtype: torch.dtype) -> Tolerance:
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance defined for {dtype}; known: {sorted(str(d) for d in TOLERANCES)}")
    return TOLERANCES[dtype]


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected|, computed in float64 (0.0 when both are all zero)."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.abs().max().item()
    diff = (a - e).abs().max().item() if a.numel() else 0.0
    return diff / denom if denom > 0 else diff
