"""The independent reader: reload an exported directory with transformers (compressed-tensors checkpoints through
`CompressedTensorsConfig(run_compressed=False)`, transformers 4.57's name for `dequantize=True`), the LoRA adapter
with peft, and compare logits.

The reloaded model's weights are compared: compressed-tensors' fake quantization of activations (the dynamic
per-token int8 / fp8 of w8a8 and fp8, which vLLM does in its kernels at serving time) is switched off in the reader,
so the logits measure what we wrote, the weights, against the source run on our dequantized weights.

One exception: transformers 4.57.3 + compressed-tensors 0.20 cannot load any asymmetric pack-quantized checkpoint
(their own W4A16_ASYM output included: the zero point's parameter is created unpacked, [N, groups], and the packed
[N/8, groups] tensor does not fit). For those the dense model class is built from config.json and every quantized
Linear is decompressed by compressed-tensors' own PackedQuantizationCompressor: still their code, not ours.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

PROMPT_TOKENS = 16


def prompt_ids(vocab_size: int, tokens: int = PROMPT_TOKENS, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(int(vocab_size), 32000), (1, tokens), generator=g)


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits[0].double()


def _asymmetric(qconfig: dict) -> bool:
    return any(g.get("weights") and not g["weights"].get("symmetric", True)
               for g in qconfig.get("config_groups", {}).values())


def reload(directory: str | Path, dtype: torch.dtype, adapter: bool = True):
    """The exported model as transformers (+ peft for `<dir>/adapter`) loads it, in eval mode."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    qconfig = config.get("quantization_config")
    if qconfig is None:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    elif _asymmetric(qconfig):
        model = _decompressed_by_compressed_tensors(directory, dtype, qconfig)
    else:
        import warnings
        with warnings.catch_warnings():  # "the quantization_config from the model will be used": that is the point
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, quantization_config=CompressedTensorsConfig(run_compressed=False))
    for module in model.modules():
        if hasattr(module, "quantization_scheme"):
            module.quantization_enabled = False  # weights only (see the module docstring)
    if adapter and (directory / "adapter").is_dir():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, directory / "adapter")
    return model.eval()


def _decompressed_by_compressed_tensors(directory: Path, dtype: torch.dtype, qconfig: dict):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    parsed = QuantizationConfig.model_validate(qconfig)
    if len(parsed.config_groups) != 1 or parsed.format != "pack-quantized":
        raise ValueError(f"{directory}: the fallback reader handles one pack-quantized config group only")
    scheme = next(iter(parsed.config_groups.values()))
    config = AutoConfig.from_pretrained(directory)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    dense = {k: v for k, v in state.items() if ".weight_" not in k}
    for prefix in sorted({k.rsplit(".weight_", 1)[0] for k in state if k.endswith(".weight_packed")}):
        parts = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.startswith(prefix + ".weight_")}
        dense[prefix + ".weight"] = PackedQuantizationCompressor.decompress(parts, scheme)["weight"].to(dtype)
    missing, unexpected = model.load_state_dict(dense, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    if unexpected or [m for m in missing if not (tied and m == "lm_head.weight")]:
        raise ValueError(f"{directory}: checkpoint keys do not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if tied:
        model.tie_weights()
    return model


def max_abs_diff(reference, directory: str | Path, dtype: torch.dtype, ids: Optional[torch.Tensor] = None) -> dict:
    """Max |logit difference| between `reference` (a model) and the reloaded export, on a fixed prompt."""
    reloaded = reload(directory, dtype)
    if ids is None:
        ids = prompt_ids(reloaded.config.vocab_size)
    want, got = logits(reference.eval(), ids), logits(reloaded, ids)
    return {"max_abs_logit_diff": float((got - want).abs().max()), "tokens": int(ids.numel()),
            "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).double().mean())}
