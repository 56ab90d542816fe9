"""Shared helpers of the vLLM export tests: tiny models whose Linear inputs are multiples of the int4 group (128),
the independent reader (transformers + compressed-tensors) and the parity check."""
from __future__ import annotations

from pathlib import Path

import torch

import models
from slipstream.backends.vllm.verify import logits, prompt_ids, reload

QUANT_SHAPES = dict(hidden_size=128, intermediate_size=256)


def build(family: str, **overrides):
    extra = dict(head_dim=32) if family == "qwen3" else {}  # o_proj input 4 x 32 = 128
    return models.build(family, **{**QUANT_SHAPES, **extra, **overrides})


def reloaded_logits(directory: Path, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    model = reload(directory, dtype)
    return logits(model, prompt_ids(model.config.vocab_size))


def model_logits(model) -> torch.Tensor:
    return logits(model.eval(), prompt_ids(model.config.vocab_size))


def assert_parity(directory: Path, reference, atol: float, dtype: torch.dtype = torch.float32) -> float:
    """The reloaded export's logits match `reference`'s within `atol` (AssertionError otherwise)."""
    diff = float((reloaded_logits(directory, dtype) - model_logits(reference)).abs().max())
    assert diff <= atol, f"max |logit difference| {diff:.3g} > {atol}"
    return diff


def dequantized_reference(model, directory: Path):
    """`model`'s architecture on the weights our own formats' code dequantizes (not read back from the files):
    every Linear but lm_head quantized with the scheme the directory's card names, as slipstream quantizes it."""
    import copy

    from slipstream.backends.vllm import SCHEMES
    from slipstream.backends.vllm.compressed import quantize_weight
    from slipstream.backends.vllm.layout import read_card

    scheme = SCHEMES[read_card(directory)["quantization"]["scheme"]]
    reference = copy.deepcopy(model)
    for path, module in reference.named_modules():
        if isinstance(module, torch.nn.Linear) and not path.endswith("lm_head"):
            with torch.no_grad():
                module.weight.copy_(quantize_weight(module.weight, scheme).dequantize(module.weight.dtype))
    return reference
