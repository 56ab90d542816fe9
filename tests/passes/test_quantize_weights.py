"""quantize-weights: fires on the linears (not lm_head, tied heads or adapters), refuses with reasons, agrees with
the same model on the dequantized weights, reports and achieves its memory saving."""
from __future__ import annotations

import copy

import pytest
import torch

import models
import slipstream
from slipstream.debug.tolerance import max_rel_error
from slipstream.modules import QuantLinear
from slipstream.passes import Pipeline, PipelineError

PASS = "quantize-weights"
LINEARS_PER_LAYER = 7


def _dequantized_copy(model, quantized):
    """`model` with each linear's weight replaced by what `quantized` stores for it: the exact reference."""
    ref = copy.deepcopy(model)
    for path, module in quantized.named_modules():
        if isinstance(module, QuantLinear):
            ref.get_submodule(path).weight.data = module.dequantize(torch.float32).to(module.weight_dtype)
    return ref


@pytest.mark.parametrize("options", ["format=nf4", "format=int4 group-size=64 symmetric=false", "format=int8",
                                     "format=fp8"])
def test_fires_and_agrees_with_dequantized_weights(options):
    model = models.build("llama")
    opt = slipstream.optimize(copy.deepcopy(model), pipeline=f"{PASS}{{{options}}}")
    report = slipstream.report(opt)
    assert report.fused(PASS) == LINEARS_PER_LAYER * model.config.num_hidden_layers
    assert [(rule, path) for rule, path, _ in report.refusals(PASS)] == [("linear", "lm_head")]
    assert "excluded" in report.refusals(PASS)[0][2]
    assert sum(isinstance(m, QuantLinear) for m in opt.modules()) == report.fused(PASS)
    assert "linear(s):" in slipstream.explain(opt) and "MiB ->" in slipstream.explain(opt)
    ref = _dequantized_copy(model, opt)
    ids = models.token_batch()
    out, want = opt(ids).logits, ref(ids).logits
    assert max_rel_error(out, want) <= 1e-5
    quantized_error = max_rel_error(out, model(ids).logits)
    assert 0 < quantized_error < 0.5  # the weights really changed, and the model still computes the same thing


def test_memory_of_int4_linears_is_under_a_third_of_bf16():
    model = models.build("llama", dtype=torch.bfloat16, hidden_size=256, intermediate_size=512)
    linear_bytes = sum(m.weight.numel() * 2 for p, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and p != "lm_head")
    total_before = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    slipstream.optimize(model, pipeline=f"{PASS}{{format=int4}}", warmup=False)
    total_after = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    quantized_bytes = sum(m.nbytes for m in model.modules() if isinstance(m, QuantLinear))
    assert quantized_bytes <= 0.3 * linear_bytes
    assert total_before - total_after == linear_bytes - quantized_bytes


def test_refuses_tied_head_and_can_include_lm_head():
    tied = models.build("gemma")  # gemma ties lm_head to the token embedding
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    slipstream.optimize(tied, pipeline=f"{PASS}{{exclude=none}}", warmup=False)
    [(_, path, reason)] = slipstream.report(tied).refusals(PASS)
    assert path == "lm_head" and "tied to an embedding" in reason
    untied = models.build("llama")
    slipstream.optimize(untied, pipeline=f"{PASS}{{exclude=none}}", warmup=False)
    assert isinstance(untied.lm_head, QuantLinear) and slipstream.report(untied).refusals(PASS) == []


def test_keeps_lora_adapters_dense():
    import peft
    model = peft.get_peft_model(models.build("llama"), peft.LoraConfig(r=4, target_modules="all-linear"))
    slipstream.optimize(model, pipeline=PASS, warmup=False)
    lora = [m for p, m in model.named_modules() if ".lora_" in p and isinstance(m, torch.nn.Linear)]
    assert lora and all(type(m) is torch.nn.Linear for m in lora)
    assert all(isinstance(layer.base_layer, QuantLinear) for layer in model.modules() if hasattr(layer, "lora_A"))
    assert "kept 28 LoRA adapter linear(s) dense" in slipstream.explain(model)


@pytest.mark.parametrize("text,needle", [("quantize-weights{format=int3}", "int3"),
                                         ("quantize-weights{format=int4 group-size=96}", "group_size")])
def test_bad_options_are_parse_errors(text, needle):
    with pytest.raises((PipelineError, ValueError), match=needle):
        Pipeline.parse(text)
