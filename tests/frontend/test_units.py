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
    # a plain nn.Embedding is one op with nothing to fuse; Gemma 3's scaled embedding is the model's own module
    embed = ["model.embed_tokens"] if family == "gemma3" else []
    assert names == ["model.layers.0", "model.layers.1", *embed, "model.norm"]


def test_builtin_single_op_modules_are_not_units():
    """A ModuleList of nn.Embedding / nn.Linear (Qwen3-TTS's per-codebook embeddings and heads) is no layer stack,
    and such siblings are no units: capturing them would only add a compiled call per use."""
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(2)])
            self.heads = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.embed = nn.Embedding(8, 4)
            self.norm = nn.LayerNorm(4)
            self.scaled = ScaledEmbedding(8, 4)

    class ScaledEmbedding(nn.Embedding):  # a model's own subclass may hold more than one op: still a unit
        pass

    names = [n for n, _ in find_units(Decoder())]
    assert names == ["layers.0", "layers.1", "scaled"]


def test_peft_model_units_are_inside_the_wrapper():
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(models.build("qwen2"), LoraConfig(r=4, target_modules=["q_proj"]))
    names = [n for n, _ in find_units(model)]
    assert names[0] == "base_model.model.model.layers.0" and len(names) == 3


def test_module_without_layer_stack_is_one_unit():
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert find_units(module) == [("", module)]


def test_relative_path_from_dynamo_sources():
    assert relative_path("L['orig'].__self__.mlp.act_fn") == "mlp.act_fn"
    assert relative_path("L['self']._modules['mlp']._modules['act_fn']") == "mlp.act_fn"
    assert relative_path("L['orig'].__self__") == ""
