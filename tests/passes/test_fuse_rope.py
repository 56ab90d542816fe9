"""fuse-rope: fires (full and partial rotary, halves and interleaved, q and k in one call, both head layouts),
refuses, agrees."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_agrees, optimize_with


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotate_neighbours(x):
    """GLM's / Helium's rotate_half: pairs of neighbouring dims."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


class Rotary(nn.Module):
    """q [b,h,s,d] (or [b,s,h,d] with heads_dim=2), cos/sin [b,s,r] unsqueezed over heads, like HF models."""
    rotate = staticmethod(rotate_half)

    def __init__(self, rotary_dim=None, heads_dim=1, with_k=True):
        super().__init__()
        self.rotary_dim, self.heads_dim, self.with_k = rotary_dim, heads_dim, with_k

    def apply(self, x, cos, sin):
        r = self.rotary_dim
        if r is None:
            return x * cos + self.rotate(x) * sin
        x_rot, x_pass = x[..., :r], x[..., r:]
        return torch.cat([x_rot * cos + self.rotate(x_rot) * sin, x_pass], dim=-1)

    def forward(self, q, k, cos, sin):
        cos, sin = cos.unsqueeze(self.heads_dim), sin.unsqueeze(self.heads_dim)
        q = self.apply(q, cos, sin)
        return (q, self.apply(k, cos, sin)) if self.with_k else q


class InterleavedRotary(Rotary):
    rotate = staticmethod(rotate_neighbours)


def _inputs(dtype, b=2, s=5, hq=4, hk=2, d=16, r=None, heads_dim=1, cos_batch=None):
    def shape(h):
        return (b, h, s, d) if heads_dim == 1 else (b, s, h, d)
    r = r or d
    angles = torch.randn(cos_batch or b, s, r // 2).repeat(1, 1, 2)
    return (torch.randn(shape(hq), dtype=dtype), torch.randn(shape(hk), dtype=dtype),
            angles.cos().to(dtype), angles.sin().to(dtype))


# each layout in fp32, bf16 on the first (the rewrite does not depend on the dtype; the tolerance table does)
@pytest.mark.parametrize("rotary_dim,heads_dim,cos_batch,dtype", [
    (None, 1, None, torch.float32), (None, 1, None, torch.bfloat16), (8, 1, 1, torch.float32),
    (None, 2, None, torch.float32)])
def test_fires_and_agrees(rotary_dim, heads_dim, cos_batch, dtype):
    module = Rotary(rotary_dim, heads_dim)
    inputs = _inputs(dtype, r=rotary_dim, heads_dim=heads_dim, cos_batch=cos_batch)
    opt, ref, report = optimize_with(module, "fuse-rope", *inputs)
    assert report.fused("fuse-rope") == 2
    rule = "rotate-half" if rotary_dim is None else "partial-rotary"
    assert report.passes["fuse-rope"].matches == {(rule, ""): 2}
    assert_agrees(opt, ref, *inputs)


@pytest.mark.parametrize("rotary_dim,heads_dim,dtype", [
    (None, 1, torch.float32), (None, 1, torch.bfloat16), (8, 1, torch.float32), (None, 2, torch.float32)])
def test_interleaved_fires_and_agrees(rotary_dim, heads_dim, dtype):
    inputs = _inputs(dtype, r=rotary_dim, heads_dim=heads_dim)
    opt, ref, report = optimize_with(InterleavedRotary(rotary_dim, heads_dim), "fuse-rope", *inputs)
    rule = "interleaved" if rotary_dim is None else "partial-interleaved"
    assert report.passes["fuse-rope"].matches == {(rule, ""): 2}
    with torch.no_grad():  # the CPU reference is HF's computation, op for op
        assert all(torch.equal(g, w) for g, w in zip(opt(*inputs), ref(*inputs)))
    assert_agrees(opt, ref, *inputs)


class HalvesAndNeighbours(Rotary):
    """q rotated by halves, k by neighbours: two calls, one per layout, never one call for both."""
    def forward(self, q, k, cos, sin):
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_neighbours(k) * sin


def test_each_layout_gets_its_own_call():
    inputs = _inputs(torch.float32)
    opt, ref, report = optimize_with(HalvesAndNeighbours(), "fuse-rope", *inputs)
    assert report.passes["fuse-rope"].matches == {("rotate-half", ""): 1, ("interleaved", ""): 1}
    assert_agrees(opt, ref, *inputs)


@pytest.mark.parametrize("module", [Rotary, InterleavedRotary])
def test_refuses_mismatched_cos_dtype_in_either_layout(module):
    q, k, cos, sin = _inputs(torch.bfloat16)
    opt, ref, report = optimize_with(module(), "fuse-rope", q, k, cos.float(), sin.float())
    assert report.fused("fuse-rope") == 0
    assert {r for _, _, r in report.refusals()} == {
        "cos/sin dtype torch.float32 differs from q/k dtype torch.bfloat16 (eager would promote)"}
    assert_agrees(opt, ref, q, k, cos.float(), sin.float())


def test_single_application_fuses_alone():
    module = Rotary(with_k=False)
    inputs = _inputs(torch.float32)
    opt, ref, report = optimize_with(module, "fuse-rope", *inputs)
    assert report.fused("fuse-rope") == 1
    assert_agrees(opt, ref, *inputs)


def test_refuses_mismatched_cos_dtype():
    module = Rotary()
    q, k, cos, sin = _inputs(torch.bfloat16)
    cos, sin = cos.float(), sin.float()
    opt, ref, report = optimize_with(module, "fuse-rope", q, k, cos, sin)
    assert report.fused("fuse-rope") == 0
    reasons = {reason for _, _, reason in report.refusals()}
    assert reasons == {"cos/sin dtype torch.float32 differs from q/k dtype torch.bfloat16 (eager would promote)"}
    assert_agrees(opt, ref, q, k, cos, sin)


class NotRotateHalf(Rotary):
    """Splits at a third instead of a half: looks like RoPE, is not."""
    def apply(self, x, cos, sin):
        t = x.shape[-1] // 4
        return x * cos + torch.cat((-x[..., t:], x[..., :t]), dim=-1) * sin


def test_refuses_wrong_split():
    inputs = _inputs(torch.float32)
    opt, ref, report = optimize_with(NotRotateHalf(), "fuse-rope", *inputs)
    assert report.fused("fuse-rope") == 0
    assert all("not half of the rotary width" in reason for _, _, reason in report.refusals())
    assert sum(report.passes["fuse-rope"].rejections.values()) == 2  # q and k
    assert_agrees(opt, ref, *inputs)


class RotateThenUpcast(Rotary):
    """Ernie 4.5's order: the rotation is taken in the input dtype and only then upcast (`rotate_half(q).float()`),
    a different rounding from slipstream::rope in 16-bit, so no rule may fit."""
    def apply(self, x, cos, sin):
        return (x.float() * cos + self.rotate(x).float() * sin).to(x.dtype)


def test_unmatched_rotation_names_the_closest_rule_and_where_it_stopped():
    inputs = _inputs(torch.bfloat16)
    q, k, cos, sin = inputs
    opt, ref, report = optimize_with(RotateThenUpcast(), "fuse-rope", q, k, cos.float(), sin.float())
    assert report.fused("fuse-rope") == 0
    reasons = [reason for _, _, reason in report.refusals()]
    assert len(reasons) == 2  # q's and k's rotation
    assert all(r.startswith("'neg' node") and "fits none of this pass's rules; closest: rule 'rotate-half'" in r
               and "then wanted 'cat' where it found 'cast' node" in r for r in reasons), reasons
    assert_agrees(opt, ref, q, k, cos.float(), sin.float())


class RotaryDimFromCos(Rotary):
    """GPT-NeoX style: the rotary width is read off cos (`q[..., : cos.shape[-1]]`), a size computed in the graph."""
    def apply(self, x, cos, sin):
        r = cos.shape[-1]
        x_rot, x_pass = x[..., :r], x[..., r:]
        return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)


@pytest.mark.parametrize("s", [1, 5])
def test_fires_when_the_rotary_width_is_read_off_cos(s):
    inputs = _inputs(torch.float32, s=s, r=8)
    opt, ref, report = optimize_with(RotaryDimFromCos(), "fuse-rope", *inputs)
    assert report.passes["fuse-rope"].matches == {("partial-rotary", ""): 2}, report.refusals()
    removed = [line for p in report.traces[0].passes for h in p.hunks for line in h.removed]
    assert any("floordiv(" in line for line in removed)  # the size arithmetic went with the match: none left dead
    assert_agrees(opt, ref, *inputs)
