"""fold-mrope: fires (interleaved and sectioned mRoPE selection), refuses (with the reason), agrees (forward and
backward, the tables requiring grad too); the run-time decision (plain RoPE / "mRoPE axes differ") is reported."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slipstream
from helpers import assert_agrees, optimize_with

D = 16  # head dim; mRoPE sections count frequencies (D // 2 in all)


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


class Interleaved(nn.Module):
    """Interleaved mRoPE (Qwen3 style): frequency f takes axis f % 3 while that axis has sections left, else 0."""
    sections = (4, 2, 2)

    def select(self, table, source=None):
        x = table[..., : table.shape[-1] // 2]
        y = x[0].clone()
        for axis, n in enumerate(self.sections[1:], 1):
            y[..., axis: 3 * n: 3] = self.written(x if source is None else source, axis, n)
        return torch.cat([y, y], dim=-1).unsqueeze(1)

    def written(self, x, axis, n):
        return x[axis, ..., axis: 3 * n: 3]

    def forward(self, q, k, cos, sin):
        cos, sin = self.select(cos), self.select(sin)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Sections(Interleaved):
    """Sectioned mRoPE (Qwen2-VL style): contiguous sections per axis, the same split for both halves."""
    sections = (3, 2, 3)
    order = None

    def select(self, table, source=None):
        chunks = table.split(list(self.sections) * 2, dim=-1)
        order = self.order or range(len(chunks))
        return torch.cat([chunks[i][i % 3] for i in order], dim=-1).unsqueeze(1)


class ShiftedColumns(Interleaved):
    """Writes each column from a neighbouring one: looks like the selection, is not."""
    def written(self, x, axis, n):
        return x[axis, ..., axis - 1: 3 * n - 1: 3]


class FromOtherTable(Interleaved):
    """The cos selection takes two axes from the sin table."""
    def forward(self, q, k, cos, sin):
        half = sin[..., : sin.shape[-1] // 2]
        cos, sin = self.select(cos, source=half), self.select(sin)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Reordered(Sections):
    order = (1, 0, 2, 3, 4, 5)


def _inputs(equal_axes: bool, dtype=torch.float32, b=2, s=5):
    pos = torch.arange(s, dtype=torch.float64).expand(3, b, s).clone()
    if not equal_axes:
        pos[1] += 5
        pos[2] *= 2
    inv_freq = 1.0 / (100 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    angles = (pos[..., None] * inv_freq).repeat(1, 1, 1, 2)
    return (torch.randn(b, 4, s, D, dtype=dtype), torch.randn(b, 2, s, D, dtype=dtype),
            angles.cos().to(dtype), angles.sin().to(dtype))


# bf16 on the scatter path (axes differ); equal axes fold to plain RoPE whatever the dtype
@pytest.mark.parametrize("equal_axes,dtype", [(True, torch.float32), (False, torch.float32), (False, torch.bfloat16)],
                         ids=["equal", "differ", "differ-bf16"])
@pytest.mark.parametrize("module,rule", [(Interleaved, "interleaved"), (Sections, "sections")])
def test_fires_agrees_and_reports_the_decision(module, rule, equal_axes, dtype):
    inputs = _inputs(equal_axes, dtype)
    opt, ref, report = optimize_with(module(), "fold-mrope", *inputs)
    assert report.passes["fold-mrope"].matches == {(rule, ""): 2}
    assert report.refusals() == []
    got, want = opt(*inputs), ref(*inputs)
    assert all(torch.equal(g, w) for g, w in zip(got, want))  # a selection of values: exact in any dtype
    decision = ("plain RoPE", "mRoPE axes equal") if equal_axes else ("mRoPE selection", "mRoPE axes differ")
    assert report.decisions("fold-mrope") == [("", *decision)]
    assert f"ran {decision[0]} at 1 site(s) ({decision[1]})" in slipstream.explain(opt)
    assert_agrees(opt, ref, *inputs)  # backward too, with the tables requiring grad (the scatter)


def test_then_fuse_rope_fires_on_the_selected_tables():
    inputs = _inputs(False)
    opt, ref, report = optimize_with(Interleaved(), "fold-mrope, fuse-rope", *inputs)
    assert report.fused("fold-mrope") == 2 and report.fused("fuse-rope") == 2
    # the `d // 2` both rewrites' slices read goes with its last reader, shown in the diff (no dead node left)
    removed = [line for p in report.traces[0].passes for h in p.hunks for line in h.removed]
    half = next(line for line in removed if "floordiv(" in line)
    assert any(f"slice(None, {half.split(' =')[0]}, None)" in line for line in removed)
    with torch.no_grad():
        got, want = opt(*inputs), ref(*inputs)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("module,reason", [
    (ShiftedColumns, "a write stores columns 0:5:3 of axis 1 into columns 1:6:3 (not a per-column axis choice)"),
    (FromOtherTable, "a write reads another tensor than the table the selection starts from"),
    (Reordered, "the cat takes chunks [1, 0, 2, 3, 4, 5] of a split into 6, not each once in order"),
])
def test_refuses_what_is_not_an_axis_selection(module, reason):
    inputs = _inputs(False)
    opt, ref, report = optimize_with(module(), "fold-mrope", *inputs)
    refusals = report.refusals("fold-mrope")
    assert refusals and all(reason in r for _, _, r in refusals), refusals
    expected = 1 if module is FromOtherTable else 0  # the sin selection is a plain one
    assert report.fused("fold-mrope") == expected
    assert_agrees(opt, ref, *inputs)


class Plain(nn.Module):
    """Plain RoPE (one [b, s, d] table) beside reads of a packed qkv's leading axis: nothing to fold, nothing to
    refuse (reading `x[0]` and `x[1]` is no mRoPE selection)."""
    def forward(self, q, cos):
        qkv = torch.stack([q, 2 * q, 3 * q])
        q = qkv[0] * qkv[1] + qkv[2]
        return q * cos[:, None] + rotate_half(q) * cos[:, None]


def test_nothing_to_do_without_mrope():
    q, cos = torch.randn(2, 4, 5, D), torch.randn(2, 5, D)
    opt, ref, report = optimize_with(Plain(), "fold-mrope", q, cos)
    assert report.fused("fold-mrope") == 0 and report.refusals() == [] and report.decisions() == []
    assert torch.equal(opt(q, cos), ref(q, cos))
