"""merge_lora: LoRA folded into dense weights, including peft's LoRA biases (lora_bias=True)."""
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

import models
from slipstream import merge_lora


def _peft(family: str, targets: list[str], lora_bias: bool):
    model = get_peft_model(models.build(family), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                          lora_bias=lora_bias))
    torch.manual_seed(5)
    with torch.no_grad():  # peft initialises B (and its bias) to zero: make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_lora_bias_is_merged_into_the_base_bias():
    """Qwen2's q/k/v have biases: merged weights and biases equal peft's own merge_and_unload."""
    model = _peft("qwen2", ["q_proj", "k_proj", "v_proj"], lora_bias=True)
    merged = merge_lora(model)
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(want)
    for name, tensor in want.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
    base = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.bias
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.bias"], base)  # the LoRA bias is in


def test_lora_bias_without_a_base_bias_is_refused():
    model = _peft("llama", ["o_proj"], lora_bias=True)  # Llama's o_proj has no bias
    with pytest.raises(ValueError, match=r"o_proj has a LoRA bias .* base layer has no bias"):
        merge_lora(model)
