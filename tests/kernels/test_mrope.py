"""slipstream::mrope_select against an independent definition (a per-column axis map and a gather): forward exact,
backward (the scatter) in float64, both run-time paths (equal axes: plain RoPE; axes that differ), opcheck, and
the decision it records."""
import pytest
import torch
from kernel_testing import f64, grads, randn

from slipstream.context import DECISIONS
from slipstream.kernels import mrope_select
from slipstream.kernels.mrope import OPEN

# name -> (half, axes, starts, ends, steps, repeat) for a table of width 16
FORMS = {
    "interleaved": (True, [1, 2], [1, 2], [6, 6], [3, 3], 2),      # Qwen3 mRoPE, sections [4, 2, 2]
    "sections": (False, [1, 2, 1, 2], [3, 5, 11, 13], [5, 8, 13, 16], [1, 1, 1, 1], 1),  # Qwen2-VL [3, 2, 3] * 2
    "open-end": (True, [2], [1], [OPEN], [2], 1),
}


def _axis_map(width: int, half: bool, axes, starts, ends, steps, repeat) -> tuple[list[int], list[int]]:
    """(axis, column) of each output column: axis 0 unless a later write claims the column."""
    n = width // 2 if half else width
    owner = [0] * n
    for a, s, e, st in zip(axes, starts, ends, steps):
        for c in range(n)[s:e:st]:
            owner[c] = a
    return owner * repeat, list(range(n)) * repeat


def _gather(table: torch.Tensor, form) -> torch.Tensor:
    axes, cols = _axis_map(table.shape[-1], *form)
    return torch.stack([table[a, ..., c] for a, c in zip(axes, cols)], -1)


def _table(equal_axes: bool, dtype=torch.float32) -> torch.Tensor:
    t = randn(3, 2, 5, 16, dtype=dtype)
    return t[:1].expand(3, -1, -1, -1).clone() if equal_axes else t


@pytest.mark.parametrize("equal_axes", [True, False], ids=["equal", "differ"])
@pytest.mark.parametrize("form", FORMS)
def test_forward_exact_backward_scatters(form, equal_axes):
    table = _table(equal_axes).requires_grad_()
    out = mrope_select(table, *FORMS[form])
    assert torch.equal(out, _gather(table.detach(), FORMS[form]))
    go = randn(*out.shape)
    (got,) = grads(out, [table], go)
    t64 = f64(table)
    (want,) = grads(_gather(t64, FORMS[form]), [t64], go.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("equal_axes", [True, False], ids=["equal", "differ"])
def test_opcheck(equal_axes):
    table = _table(equal_axes, torch.float64).requires_grad_()
    torch.library.opcheck(torch.ops.slipstream.mrope_select.default, (table, *FORMS["interleaved"], "s", "u"))


def test_records_the_decision_with_its_reason():
    log = set()
    token = DECISIONS.set(log)
    try:
        mrope_select(_table(True), *FORMS["interleaved"], site="self_attn", unit="layers.0")
        mrope_select(_table(False), *FORMS["interleaved"], site="self_attn", unit="layers.1")
    finally:
        DECISIONS.reset(token)
    assert log == {("fold-mrope", "layers.0", "self_attn", "plain RoPE", "mRoPE axes equal"),
                   ("fold-mrope", "layers.1", "self_attn", "mRoPE selection", "mRoPE axes differ")}


def test_only_the_axes_read_decide():
    """Axis 2 differs but no write reads it: the selection is still axis 0's values."""
    table = _table(True)
    table[2] += 1
    log = set()
    token = DECISIONS.set(log)
    try:
        out = mrope_select(table, True, [1], [1], [6], [3], 2)
    finally:
        DECISIONS.reset(token)
    assert torch.equal(out, _gather(table, (True, [1], [1], [6], [3], 2)))
    assert {d[3:] for d in log} == {("plain RoPE", "mRoPE axes equal")}


def test_axis_check_runs_once_per_table_object(monkeypatch):
    """Every layer of a forward gets the same table: the equality check (a device sync on GPU) runs once for it,
    and again only after the table changes in place."""
    from slipstream.kernels import mrope

    checks = []
    real_equal = torch.equal
    monkeypatch.setattr(mrope.torch, "equal", lambda a, b: checks.append(1) or real_equal(a, b))
    half, axes, starts, ends, steps, repeat = FORMS["interleaved"]
    table = _table(True)
    for _ in range(3):
        assert mrope.axes_equal(table, axes)
    assert len(checks) == 2  # axes 1 and 2 against axis 0, once
    table[1, 0, 0, 1] += 1.0  # in place: the version changes, the answer too
    assert not mrope.axes_equal(table, axes) and len(checks) == 3
    got = mrope_select(table, half, axes, starts, ends, steps, repeat, "s", "u")
    assert torch.equal(got, _gather(table, FORMS["interleaved"]))
