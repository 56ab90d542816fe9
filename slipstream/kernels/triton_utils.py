"""Host-side launch helpers shared by the `triton_*.py` kernel modules: tile sizes, grids, the launch guard."""
from __future__ import annotations

import contextlib

import torch

from slipstream.kernels.dispatch import check_launchable


def cdiv(a: int, b: int) -> int:
    """`triton.cdiv` for host code. Triton's is a `constexpr_function` object (triton 3.9): ~3 us of host time
    per call on a 2-core CPU against ~0.05 us here, and a launch computes several."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """`triton.next_power_of_2` for host code (same values for n >= 0, 0 included); see `cdiv`."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


# Largest row a row kernel keeps in registers, and the tile short rows are batched up to (fp32 elements).
MAX_ROW_BLOCK = 65536
ROW_TILE = 4096


def row_tile(n: int, m: int, op: str) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for kernels that keep whole rows of length n in registers.

    Short rows (e.g. Qwen3's per-head q/k norm over 128 dims) are batched BLOCK_M to a program so each program
    still moves a few KB; wide rows get one program and more warps.
    """
    block_n = next_power_of_2(max(n, 1))
    if block_n > MAX_ROW_BLOCK:
        raise ValueError(f"{op}: the Triton kernel keeps a row in registers; last dim {n} > {MAX_ROW_BLOCK}")
    block_m = max(1, min(next_power_of_2(max(m, 1)), ROW_TILE // block_n))
    return block_m, block_n, warps_for(block_m * block_n)


def warps_for(elements: int) -> int:
    """More warps for bigger tiles, so each thread holds a bounded number of elements."""
    if elements >= 32768:
        return 32
    if elements >= 8192:
        return 16
    if elements >= 2048:
        return 8
    return 4


def persistent_programs(t: torch.Tensor, work: int, per_sm: int = 1) -> int:
    """Programs for a grid-stride kernel: per_sm per SM on GPU; a few on CPU (the interpreter runs them serially)."""
    if t.device.type == "cuda":
        return max(1, min(work, per_sm * torch.cuda.get_device_properties(t.device).multi_processor_count))
    return max(1, min(work, 4))


def launch_guard(kernel: object, t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make `t`'s GPU current for the launch (Triton launches on the current device)."""
    check_launchable(kernel, t)
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """View `t` as [rows, last] with a unit last-dim stride; copies only when no such view exists."""
    if t.dim() == 0 or t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
