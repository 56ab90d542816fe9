"""A peft LoRA adapter directory vLLM loads (`--enable-lora`, `LoRARequest(name, id, path)`): adapter_config.json
and adapter_model.safetensors with keys `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight`.

vLLM refuses adapters with rank above `--max-lora-rank` (default 16), LoRA bias, DoRA and `modules_to_save` (e.g.
a trained lm_head); those are checked here, before anything is written, with the way out in the message.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from slipstream.backends.errors import ExportError

MAX_LORA_RANK = 16  # vLLM's default --max-lora-rank
_MERGE = "export with lora='merge' (--lora merge) to fold it into the base weights instead"


def active_adapter(model: Any, max_lora_rank: int = MAX_LORA_RANK):
    """(adapter name, its peft LoraConfig) after vLLM's checks, or ExportError naming the way out."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise ExportError("lora='adapter' needs a peft model with a LoRA adapter; this model has none "
                          "(export it with lora='merge', the default)")
    active = getattr(model, "active_adapters", None) or [getattr(model, "active_adapter", None)]
    active = [a for a in active if a is not None]
    if len(active) != 1:
        raise ExportError(f"the model has {len(active)} active adapters ({', '.join(active)}); a vLLM adapter dir "
                          "holds one: call model.set_adapter(name) first, or " + _MERGE)
    name = active[0]
    config = configs[name]
    if str(getattr(config, "peft_type", "")).upper().split(".")[-1] != "LORA":
        raise ExportError(f"adapter {name!r} is {config.peft_type}, not LoRA; vLLM serves LoRA adapters only")
    ranks = [int(config.r)] + [int(r) for r in (getattr(config, "rank_pattern", None) or {}).values()]
    if max(ranks) > max_lora_rank:
        raise ExportError(f"LoRA rank {max(ranks)} is above vLLM's max_lora_rank {max_lora_rank}: serve with "
                          f"--max-lora-rank {max(ranks)} and export with max_lora_rank={max(ranks)}, or " + _MERGE)
    if getattr(config, "bias", "none") != "none" or getattr(config, "lora_bias", False):
        raise ExportError(f"adapter {name!r} trains biases (bias={config.bias!r}, lora_bias="
                          f"{getattr(config, 'lora_bias', False)}), which vLLM adapters cannot carry; " + _MERGE)
    if getattr(config, "use_dora", False):
        raise ExportError(f"adapter {name!r} is DoRA, which vLLM does not load (and slipstream does not merge): "
                          "merge it with peft's merge_and_unload() and export the merged model")
    if getattr(config, "modules_to_save", None):
        raise ExportError(f"adapter {name!r} has modules_to_save {sorted(config.modules_to_save)}, fully trained "
                          "copies vLLM adapters cannot carry; " + _MERGE)
    return name, config


def adapter_tensors(model: Any, name: str, dtype: torch.dtype) -> dict[str, Tensor]:
    """The adapter's weights under peft's saved key names, floating tensors in `dtype`."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name)
    bad = [k for k in state if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))]
    if bad:
        raise ExportError(f"adapter {name!r} holds tensors vLLM adapters cannot carry ({bad[0]!r}, ...); " + _MERGE)
    return {k: v.detach().to(dtype).contiguous() for k, v in state.items()}


def adapter_config_json(config) -> str:
    data = config.to_dict()
    data["inference_mode"] = True
    return json.dumps(data, indent=2, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
