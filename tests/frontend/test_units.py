"""Units are found by structure: layer stacks and their parameter-holding siblings, for any family."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from slipstream.frontend.capture import relative_path
from slipstream.frontend.units import find_units


@pytest.mark.parametrize("family", ["llama", "gemma3", "olmo2"])
def test_layers_and_siblings(family):
    model = models.build(family)
    names = [n for n, _ in find_units(model)]
    assert names == ["model.layers.0", "model.layers.1", "model.embed_tokens", "model.norm"]


def test_peft_model_units_are_inside_the_wrapper():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(models.build("qwen2"), LoraConfig(r=4, target_modules=["q_proj"]))
    names = [n for n, _ in find_units(model)]
    assert names[0] == "base_model.model.model.layers.0" and len(names) == 4


def test_module_without_layer_stack_is_one_unit():
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert find_units(module) == [("", module)]


def test_relative_path_from_dynamo_sources():
    assert relative_path("L['orig'].__self__.mlp.act_fn") == "mlp.act_fn"
    assert relative_path("L['self']._modules['mlp']._modules['act_fn']") == "mlp.act_fn"
    assert relative_path("L['orig'].__self__") == ""
