"""`slipstream::mrope_select`: multimodal RoPE's per-frequency axis selection, and its backward op.

An mRoPE table [A, ..., W] holds one cos (or sin) table per position axis (A = 3: temporal, height, width). The
model picks, per column, the axis that column belongs to. One form covers the layouts models write:
`x = table` (or its first half, `half`), `out = x[0]` with columns `s:e:st` overwritten by `x[a, ..., s:e:st]` for
each write (a, s, e, st), then `out` repeated `repeat` times along the last dim. Interleaved mRoPE (Qwen3-TTS,
Qwen3-VL): half table, strided writes, repeat 2; sectioned mRoPE (Qwen2-VL): full table, one contiguous write per
section, repeat 1.

When the axes the writes read hold the same values as axis 0 (text-only input: the three position ids are
equal), the selection *is* axis 0: plain RoPE, and that is what runs. Otherwise the exact selection runs. Both
give identical values; the choice and its reason are recorded per site for explain(), as attention's dispatch
does. The gradient is always the selection's own (a scatter to the axis each column came from), whichever path
ran, so a table that requires grad gets the same gradient as in eager. PyTorch only: it is a copy, there is
nothing for a kernel to fuse. The check costs one `torch.equal` per axis (a device sync on GPU), once per table
object: every layer of a forward gets the same table.
"""
import sys

import torch
from torch import Tensor

from slipstream.context import record_decision
from slipstream.kernels.registry import define_op
from slipstream.kernels.tensor_memo import TensorMemo

OPEN = sys.maxsize  # an open slice bound (`x[..., 1::3]`) in the op's int-list form
PLAIN, EXACT = "plain RoPE", "mRoPE selection"
SAME, DIFFER = "mRoPE axes equal", "mRoPE axes differ"


def _check(table: Tensor, axes: list[int], starts: list[int], ends: list[int], steps: list[int], repeat: int) -> None:
    if table.dim() < 2:
        raise ValueError(f"mrope_select: table {tuple(table.shape)} must be [axes, ..., width]")
    if not len(axes) == len(starts) == len(ends) == len(steps):
        raise ValueError("mrope_select: axes, starts, ends and steps must have one entry per write")
    if repeat < 1 or any(st < 1 for st in steps):
        raise ValueError(f"mrope_select: repeat {repeat} and steps {steps} must be positive")


def _domain(table: Tensor, half: bool) -> Tensor:
    return table[..., : table.shape[-1] // 2] if half else table


def _writes(axes, starts, ends, steps):
    return [(a, slice(s, e, st)) for a, s, e, st in zip(axes, starts, ends, steps)]


def mrope_reference(table: Tensor, half: bool, axes: list[int], starts: list[int], ends: list[int],
                    steps: list[int], repeat: int) -> Tensor:
    """The exact selection, op for op as the models write it (so results are bit-identical)."""
    x = _domain(table, half)
    out = x[0].clone()
    for a, cols in _writes(axes, starts, ends, steps):
        out[..., cols] = x[a, ..., cols]
    return torch.cat([out] * repeat, -1) if repeat > 1 else out


_answers = TensorMemo()  # the same table object serves every layer of a forward: check it once


def axes_equal(table: Tensor, axes: list[int]) -> bool:
    """True when every axis a write reads holds axis 0's values: the selection is then axis 0."""
    others = tuple(sorted({a for a in axes if a % table.shape[0] != 0}))
    return _answers.get(table, others, lambda: all(torch.equal(table[0], table[a]) for a in others))


def _plain(table: Tensor, half: bool, repeat: int) -> Tensor:
    x = _domain(table, half)[0]
    return torch.cat([x] * repeat, -1) if repeat > 1 else x.clone()


def _mrope_select(table: Tensor, half: bool, axes: list[int], starts: list[int], ends: list[int],
                  steps: list[int], repeat: int, site: str, unit: str) -> Tensor:
    _check(table, axes, starts, ends, steps, repeat)
    same = axes_equal(table, axes)
    record_decision("fold-mrope", unit, site, PLAIN if same else EXACT, SAME if same else DIFFER)
    if same:
        return _plain(table, half, repeat)
    return mrope_reference(table, half, axes, starts, ends, steps, repeat)


def _mrope_select_fake(table: Tensor, half: bool, axes: list[int], starts: list[int], ends: list[int],
                       steps: list[int], repeat: int, site: str, unit: str) -> Tensor:
    _check(table, axes, starts, ends, steps, repeat)
    width = table.shape[-1] // 2 if half else table.shape[-1]
    return table.new_empty((*table.shape[1:-1], width * repeat))


def _mrope_select_backward(grad: Tensor, shape: list[int], half: bool, axes: list[int], starts: list[int],
                           ends: list[int], steps: list[int], repeat: int) -> Tensor:
    """The selection's transpose: sum the repeats (cat's backward), then each column's gradient goes to the axis
    it was read from; the last write to a column owns it, unwritten columns belong to axis 0."""
    chunks = grad.chunk(repeat, -1)
    g = chunks[0].clone()
    for c in chunks[1:]:
        g = g + c
    out = grad.new_zeros(shape)
    x = _domain(out, half)
    for a, cols in reversed(_writes(axes, starts, ends, steps)):
        x[a, ..., cols] += g[..., cols]
        g[..., cols] = 0
    x[0] += g
    return out


def _backward_fake(grad: Tensor, shape: list[int], half: bool, axes: list[int], starts: list[int],
                   ends: list[int], steps: list[int], repeat: int) -> Tensor:
    return grad.new_empty(shape)


def _setup_context(ctx, inputs, output) -> None:
    table, half, axes, starts, ends, steps, repeat, _, _ = inputs
    ctx.shape, ctx.args = list(table.shape), (half, axes, starts, ends, steps, repeat)


def _backward(ctx, grad: Tensor):
    return (mrope_select_backward_op(grad, ctx.shape, *ctx.args),) + (None,) * 8


mrope_select_backward_op = define_op("mrope_select_backward", _mrope_select_backward, _backward_fake)
mrope_select_op = define_op("mrope_select", _mrope_select, _mrope_select_fake, _backward, _setup_context)


def mrope_select(table: Tensor, half: bool, axes: list[int], starts: list[int], ends: list[int], steps: list[int],
                 repeat: int = 1, site: str = "", unit: str = "") -> Tensor:
    """Select, per column, the mRoPE axis it belongs to (see the module docstring); `site`/`unit` name the call in
    the decision log."""
    return mrope_select_op(table, half, axes, starts, ends, steps, repeat, site, unit)
