"""The graph diff: golden text for the default pipeline on tiny Llama and Qwen3, stable across runs, with
provenance on every added node and print-after modes."""
from __future__ import annotations

import re

import pytest

import models
import slipstream
from golden import assert_golden


def default_diff(family: str, **kwargs) -> str:
    return slipstream.diff(slipstream.optimize(models.build(family)), times=False, **kwargs)


@pytest.fixture(scope="module")
def llama_diff() -> str:
    return default_diff("llama")


def test_llama_default_pipeline_matches_golden(llama_diff):
    assert_golden("llama_default.diff", llama_diff)


def test_qwen3_default_pipeline_matches_golden_and_a_second_run_is_identical():
    first = default_diff("qwen3")
    assert_golden("qwen3_default.diff", first)
    assert default_diff("qwen3") == first  # a fresh model, a fresh capture: byte-identical


def test_every_added_node_names_its_pass_and_rule(llama_diff):
    added = [line for line in llama_diff.splitlines() if line.startswith("+ ")]
    assert len(added) >= 8
    for line in added:
        assert re.search(r"\[(fuse-[a-z-]+):[a-z+-]+\]$", line), line
        assert re.search(r" : (f32\[[^\]]*\]|-)", line), line  # type after the op, when the pass recorded one
    hunks = [line for line in llama_diff.splitlines() if line.startswith("@@ ")]
    assert "@@ weight-times-cast at model.layers.0.input_layernorm: %7 -> %61" in hunks
    assert "@@ silu-times-up at model.layers.0.mlp: %58 -> %63" in hunks


def test_removed_nodes_carry_shapes_and_names_are_normalised(llama_diff):
    removed = [line for line in llama_diff.splitlines() if line.startswith("- ")]
    assert "- %4 = rsqrt(%3) : f32[2, 8, 1]" in removed  # the warm-up's graph: captured static
    assert "l_args_" not in llama_diff  # inputs are named by what they are: %input_layernorm.weight


def test_sizes_that_changed_are_symbols_numbered_per_graph():
    opt = slipstream.optimize(models.build("llama", num_hidden_layers=1))
    opt(models.token_batch(batch=3, seq=5))  # batch and sequence changed: recaptured with both dynamic
    text = slipstream.diff(opt, times=False)
    graphs = text.split("=== graph ")[1:]
    assert len(graphs) == 4 and graphs[2].startswith("2: model.layers.0 ")
    assert "- %4 = rsqrt(%3) : f32[s0, s1, 1]" in graphs[2]
    assert "- %4 = rsqrt(%3) : f32[2, 8, 1]" in graphs[0]
    assert not re.search(r"\bs(?:[2-9]|\d\d+)\b", text)  # only s0, s1: dynamo's symbol names are gone


def test_times_are_shown_unless_asked_not_to():
    opt = slipstream.optimize(models.build("llama", num_hidden_layers=1))
    assert re.search(r"^--- fuse-rms-norm: 2 rewrite\(s\) \(weight-times-cast x2\) · 0 refused · \d+\.\d ms$",
                     slipstream.diff(opt), re.MULTILINE)
    everything, quiet = slipstream.diff(opt, "all", times=False), slipstream.diff(opt, "none", times=False)
    assert "--- fuse-lora-linear: no change · 0 refused" in everything
    assert "--- fuse-lora-linear" not in slipstream.diff(opt, "change")
    assert "--- fuse-rms-norm: 2 rewrite(s) (weight-times-cast x2) · 0 refused" in quiet
    assert not any(line[:2] in ("- ", "+ ", "@@") for line in quiet.splitlines())


def test_refusals_appear_with_reason_and_module_path():
    opt = slipstream.optimize(models.build("qwen3"), pipeline="fuse-rms-norm{exclude=*.k_norm}")
    text = slipstream.diff(opt, times=False)
    assert ("! weight-times-cast at model.layers.0.self_attn.k_norm: module path 'model.layers.0.self_attn.k_norm' "
            "excluded by the include/exclude options") in text.splitlines()
    assert "--- fuse-rms-norm: 3 rewrite(s) (weight-times-cast x3) · 1 refused" in text
