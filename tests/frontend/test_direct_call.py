"""Calls of captured variants run dynamo's cache entries directly; everything else goes through torch.compile."""
from __future__ import annotations

import types

import pytest
import torch

import models
import slipstream
from slipstream.frontend import capture, direct_call


def _pair(family: str = "llama"):
    return models.build(family), slipstream.optimize(models.build(family))


class _Writer(torch.nn.Module):
    """A parameter and a side effect on itself, as a decoder layer has with its KV cache."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.randn(5))
        self.last = None

    def forward(self, x):
        self.last = torch.sin(x)                                  # a side effect dynamo replays
        return self.last * self.scale


def test_this_torch_supports_direct_calls():
    # The CI torch must take the fast path; on a torch without the internals every call would be "compiled".
    assert direct_call.supported()


def test_generate_runs_captured_variants_directly():
    ref, opt = _pair()
    ids = models.token_batch(batch=1, seq=5)
    expected = ref.generate(ids, max_new_tokens=8, do_sample=False)
    got = opt.generate(ids, max_new_tokens=8, do_sample=False)   # first decode steps capture the decode variant
    assert torch.equal(got, expected)
    before = capture.call_counts(opt)
    got = opt.generate(ids, max_new_tokens=8, do_sample=False)
    after = capture.call_counts(opt)
    assert torch.equal(got, expected)
    assert after["compiled"] == before["compiled"]               # nothing new: every call was a known variant
    assert after["direct"] - before["direct"] == 8 * (opt.config.num_hidden_layers + 1)  # layers + final norm


def test_new_variant_compiles_once_then_runs_directly():
    ref, opt = _pair()
    ids = models.token_batch()
    with torch.no_grad():
        opt(ids)
    first = capture.call_counts(opt)
    loss = opt(ids, labels=ids).loss                             # grad mode: a variant not seen yet
    second = capture.call_counts(opt)
    assert second["compiled"] > first["compiled"]
    loss.backward()
    ref_loss = ref(ids, labels=ids).loss
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    opt(ids, labels=ids).loss.backward()
    third = capture.call_counts(opt)
    assert third["compiled"] == second["compiled"] and third["direct"] > second["direct"]


def test_force_eager_stance_is_honoured():
    ref, opt = _pair()
    ids = models.token_batch()
    with torch.no_grad():
        opt(ids)
        before = capture.call_counts(opt)
        runs = set(slipstream.report(opt).runs)
        with torch.compiler.set_stance("force_eager"):
            out = opt(ids).logits
        after = capture.call_counts(opt)
        torch.testing.assert_close(out, ref(ids).logits, rtol=0, atol=0)
    assert after["direct"] == before["direct"]                    # the stance forced the original code
    assert after["compiled"] > before["compiled"]
    assert set(slipstream.report(opt).runs) == runs


def test_reset_drops_the_entries_it_ran():
    ref, opt = _pair()
    ids = models.token_batch()
    with torch.no_grad():
        opt(ids)
        graphs = slipstream.report(opt).graphs
        torch.compiler.reset()                                   # dynamo forgets every entry
        before = capture.call_counts(opt)
        out = opt(ids).logits                                    # recaptured, not a stale entry
        after = capture.call_counts(opt)
        torch.testing.assert_close(out, ref(ids).logits, rtol=0, atol=0)
    assert after["compiled"] > before["compiled"]
    assert slipstream.report(opt).graphs > graphs


def test_entry_resuming_after_a_graph_break_goes_through_torch_compile():
    class Broken(torch.nn.Module):
        def forward(self, x):
            y = torch.sin(x)
            torch._dynamo.graph_break()
            return torch.cos(y)

    module = Broken()
    entries = capture._compiled_entry(type(module).forward, lambda unit, gm: gm.forward)
    x = torch.randn(5)
    for _ in range(3):
        torch.testing.assert_close(entries(module, x), torch.cos(torch.sin(x)))
    assert entries.direct_calls == 0 and entries.compiled_calls == 3


def test_graph_without_break_runs_directly_with_the_same_result():
    module = _Writer()
    graphs = []
    entries = capture._compiled_entry(type(module).forward, lambda unit, gm: graphs.append(gm) or gm.forward)
    for _ in range(3):
        x = torch.randn(4, 5)
        torch.testing.assert_close(entries(module, x), torch.sin(x) * module.scale)
        torch.testing.assert_close(module.last, torch.sin(x), rtol=0, atol=0)
    assert (entries.compiled_calls, entries.direct_calls, len(graphs)) == (1, 2, 1)
    x = torch.randn(4, 5, dtype=torch.float64)                   # a guard fails: a new entry
    torch.testing.assert_close(entries(module, x), torch.sin(x) * module.scale)
    assert (entries.compiled_calls, len(graphs)) == (2, 2)


def test_rejects_functions_of_other_signatures():
    compiled = torch.compile(lambda x: x)
    with pytest.raises(ValueError, match=r"\(\*args, \*\*kwargs\)"):
        direct_call.DirectEntries(compiled, lambda x: x)


@pytest.mark.slow
def test_user_torch_compile_around_an_optimized_model():
    # one layer: the user's compile traces every layer's code afresh, and one shows the nesting works
    ref = models.build("llama", num_hidden_layers=1)
    opt = slipstream.optimize(models.build("llama", num_hidden_layers=1))
    ids = models.token_batch()
    with torch.no_grad():
        out = torch.compile(opt, backend="eager")(ids).logits
    torch.testing.assert_close(out, ref(ids).logits, rtol=0, atol=0)


def test_unexpected_internals_fall_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(direct_call, "_SUPPORTED", direct_call._SUPPORTED)  # restored after the test
    ref, opt = _pair()
    ids = models.token_batch()
    with torch.no_grad():
        opt(ids)
        monkeypatch.setattr(direct_call, "_cache_entries", lambda code: [object()])  # entries of another shape
        before = capture.call_counts(opt)
        with pytest.warns(RuntimeWarning, match="does not expose dynamo's cache entries"):
            out = opt(ids).logits
        after = capture.call_counts(opt)
    assert not direct_call.supported()
    torch.testing.assert_close(out, ref(ids).logits, rtol=0, atol=0)
    assert after["direct"] == before["direct"] and after["compiled"] > before["compiled"]


def test_a_guard_that_raises_sends_the_call_through_torch_compile(monkeypatch):
    """A guard check raising on a call's arguments says nothing about this torch's internals: that call goes
    through torch.compile (which evaluates its guards itself) and direct calls stay on for the next ones."""
    monkeypatch.setattr(direct_call, "_SUPPORTED", direct_call._SUPPORTED)
    ref, opt = _pair()
    ids = models.token_batch()
    real = direct_call._cache_entries

    def raising(code):
        entries = real(code)
        return [types.SimpleNamespace(code=e.code, guard_manager=types.SimpleNamespace(check=_raise))
                for e in entries]

    def _raise(frame_locals):
        raise TypeError("a guard's own check failed on these arguments")
    with torch.no_grad():
        opt(ids)
        before = capture.call_counts(opt)
        monkeypatch.setattr(direct_call, "_cache_entries", raising)
        out = opt(ids).logits
        after = capture.call_counts(opt)
        monkeypatch.setattr(direct_call, "_cache_entries", real)
        opt(ids)
        again = capture.call_counts(opt)
    assert direct_call.supported()
    torch.testing.assert_close(out, ref(ids).logits, rtol=0, atol=0)
    assert after["direct"] == before["direct"] and after["compiled"] > before["compiled"]
    assert again["direct"] > after["direct"]


def test_escape_hatch_turns_direct_calls_off(monkeypatch):
    _, opt = _pair()
    ids = models.token_batch()
    monkeypatch.setattr(direct_call, "ENABLED", False)               # what SLIPSTREAM_DIRECT_CALLS=0 sets
    with torch.no_grad():
        opt(ids)
        before = capture.call_counts(opt)
        opt(ids)
    after = capture.call_counts(opt)
    assert after["direct"] == before["direct"] and after["compiled"] > before["compiled"]


def test_direct_runs_skip_dynamos_disable_wrappers():
    # With no frame-evaluation callback installed a disable wrapper only sets the callback to None around the call:
    # the runner's globals hold what is under the wrappers (the graph's callable, torch._dynamo.utils' helpers).
    module, backends = _Writer(), []

    def on_graph(unit, gm):
        def run(*args):
            return gm(*args)
        backends.append(run)
        return run

    entries = capture._compiled_entry(type(module).forward, on_graph)
    for _ in range(2):
        x = torch.randn(4, 5)
        torch.testing.assert_close(entries(module, x), torch.sin(x) * module.scale)
        torch.testing.assert_close(module.last, torch.sin(x), rtol=0, atol=0)
    assert entries.direct_calls == 1
    (runner,) = [fn for _, fn in entries._runners.values() if fn is not None]
    values = list(runner.__globals__.values())
    assert backends[0] in values
    helpers = [v for ns in values if isinstance(ns, types.SimpleNamespace)
               for v in vars(ns).values()]
    assert helpers  # the pre-graph bytecode recorders at least
    for value in values + helpers:
        assert not getattr(value, "_torchdynamo_disable", False)
        assert getattr(value, "__code__", None) is not direct_call._LAZY_DISABLE_CODE


def test_calls_under_an_active_frame_callback_go_through_torch_compile(monkeypatch):
    # Inside a region dynamo is evaluating (a resumed frame of a user's torch.compile), dynamo must see the call.
    module = _Writer()
    entries = capture._compiled_entry(type(module).forward, lambda unit, gm: gm.forward)
    x = torch.randn(4, 5)
    entries(module, x)
    monkeypatch.setattr(direct_call, "_frame_callback", lambda: object())
    torch.testing.assert_close(entries(module, x), torch.sin(x) * module.scale)
    assert (entries.compiled_calls, entries.direct_calls) == (2, 0)
