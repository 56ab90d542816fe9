"""QLoRA end to end: the train-qlora preset (NF4 base + fused LoRA + the spine's passes) trains like plain peft on
the same base dequantized to fp32; the quantized base never changes; merge_lora gives the dense model back."""
from __future__ import annotations

import copy

import pytest
import torch

import models
import slipstream
from slipstream.debug.tolerance import max_rel_error
from slipstream.modules import QuantLinear

import peft


def _pair(family: str):
    """(peft model optimized with train-qlora, plain peft model on the dequantized NF4 base), equal LoRA init."""
    torch.manual_seed(0)
    model = peft.get_peft_model(models.build(family), peft.LoraConfig(
        r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    reference = copy.deepcopy(model)
    slipstream.optimize(model, pipeline="train-qlora")
    for path, module in model.named_modules():
        if isinstance(module, QuantLinear):
            reference.get_submodule(path).weight.data = module.dequantize(torch.float32)
    return model, reference


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_qlora_training_matches_peft_on_the_dequantized_base(family):
    model, reference = _pair(family)
    report = slipstream.report(model)
    layers = model.config.num_hidden_layers
    assert report.fused("quantize-weights") == 7 * layers and report.fused("fuse-lora-linear") == 7 * layers
    frozen = {n: b.clone() for n, b in model.named_buffers() if n.endswith((".packed", ".scales", ".aux"))}
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3) for m in (model, reference)]
    model.train(), reference.train()
    for step in range(5):
        ids = models.token_batch(seed=step)
        losses = []
        for m, opt in zip((model, reference), opts):
            loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-3 * abs(losses[1]), (step, losses)
    trained = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert max_rel_error(p, trained[name]) <= 1e-4, name
    assert all(torch.equal(b, frozen[n]) for n, b in model.named_buffers() if n in frozen)
    assert len(frozen) == 3 * 7 * layers


def test_merge_lora_gives_the_dense_model_back():
    model, reference = _pair("llama")
    for n, p in model.named_parameters():  # a nonzero B, so the merge has something to fold in
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
            reference.get_submodule(n.rsplit(".", 1)[0]).weight.data = p.data.clone()
    plain = models.build("llama")
    plain.load_state_dict(slipstream.merge_lora(model), strict=True)
    ids = models.token_batch()
    with torch.no_grad():
        assert max_rel_error(plain(ids).logits, reference(ids).logits) <= 1e-5
