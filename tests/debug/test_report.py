"""explain(): per pass, fused sites with module paths and rules, refusals with reasons, graph counts."""
from __future__ import annotations

import torch

import models
import slipstream
import slipstream.passes


def test_explain_lists_sites_rules_and_units():
    opt = slipstream.optimize(models.build("gemma"))
    text = slipstream.explain(opt)
    lines = text.splitlines()
    assert lines[0] == f"slipstream {slipstream.__version__} · pipeline: {slipstream.passes.PRESETS['default']}"
    assert lines[1] == "captured 2 graph(s) serving 3 of 3 unit(s): model.layers.[0-1], model.norm"
    assert "fuse-rms-norm: fused 5 (cast-of-offset-weighted x5) · refused 0" in text
    assert "  + model.layers.1.post_attention_layernorm: cast-of-offset-weighted" in lines
    assert "fuse-swiglu: fused 2 (gelu-times-up x2)" in text
    assert "  + model.layers.0.self_attn: rotate-half x2" in lines


def test_explain_before_first_call_says_so():
    opt = slipstream.optimize(models.build("llama"), warmup=False)
    assert "no graph has run yet" in slipstream.explain(opt)
    opt(models.token_batch())
    assert "no graph has run yet" not in slipstream.explain(opt)


def test_report_counts_a_site_once_across_variants():
    opt = slipstream.optimize(models.build("llama"))
    report = slipstream.report(opt)
    before = {name: report.fused(name) for name in report.passes}
    graphs = report.graphs
    opt.train()
    ids = models.token_batch()
    opt(input_ids=ids, labels=ids).loss.backward()
    with torch.no_grad():
        opt.eval()
        opt.generate(ids[:, :4], max_new_tokens=3, do_sample=False)
    assert report.graphs > graphs  # new variants were captured (train, prefill, decode)
    assert {name: report.fused(name) for name in report.passes} == before


def test_refusal_shows_path_and_reason():
    opt = slipstream.optimize(models.build("qwen2", dtype=torch.float64))
    text = slipstream.explain(opt)
    assert ("  ! model.norm: refused (weight-times-cast): dtype float64 is not supported by slipstream::rms_norm "
            "(supported: float32, float16, bfloat16)") in text.splitlines()


def test_one_graph_serves_every_layer_of_a_stack():
    """Capture cost follows the number of distinct layer structures and variants, not the depth."""
    shallow = slipstream.report(slipstream.optimize(models.build("llama", num_hidden_layers=2)))
    deep_model = slipstream.optimize(models.build("llama", num_hidden_layers=6))
    deep = slipstream.report(deep_model)
    assert deep.graphs == shallow.graphs == 2  # the layers, the final norm (nn.Embedding is no unit)
    assert deep.fused("fuse-rms-norm") == 13 and deep.fused("fuse-rope") == 12
    ids = models.token_batch()
    graphs = deep.graphs
    deep_model.generate(ids[:, :4], max_new_tokens=4, do_sample=False)
    assert deep.graphs - graphs <= 6  # prefill and decode variants, shared by all 6 layers
