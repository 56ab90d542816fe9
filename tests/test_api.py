"""The top-level API's errors name the problem and the way out; a failed optimize() leaves nothing behind."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models
import slipstream


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'gguf'; available: module"):
        slipstream.optimize(models.build("llama"), backend="gguf")


def test_non_module_is_a_clear_error():
    with pytest.raises(TypeError, match="expects a torch.nn.Module, got str"):
        slipstream.optimize("meta-llama/Llama-3-8B")


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"vocab_size": 16})()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, input_ids, use_cache=False):
        raise RuntimeError("model bug")


def test_failed_warmup_restores_the_model():
    model = Broken()
    with pytest.raises(RuntimeError, match="model bug"):
        slipstream.optimize(model)
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(ValueError, match="not optimized"):
        slipstream.explain(model)


def test_restore_gives_back_the_original_forwards():
    model = models.build("llama")
    ids = models.token_batch()
    want = model(ids).logits
    slipstream.restore(slipstream.optimize(model))
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(model(ids).logits, want)
