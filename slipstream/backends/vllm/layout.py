"""What goes around the weights: config.json (architectures, dtype, quantization_config), generation_config.json,
tokenizer files with the chat template, the shard names and index, and the README model card (slipstream version,
pipeline, quantization, parity measured at export; `read_card` gives them back as a dict)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import torch

from slipstream.backends.errors import ExportError

from . import Scheme

_CARD_BEGIN, _CARD_END = "<!-- slipstream:begin -->\n```json\n", "\n```\n<!-- slipstream:end -->"


def architectures(config) -> list[str]:
    archs = getattr(config, "architectures", None)
    if archs:
        return list(archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if name is None:
        raise ExportError(f"model_type {getattr(config, 'model_type', None)!r} has no causal-LM class in transformers "
                          "and the config names no `architectures`; set config.architectures = ['...ForCausalLM']")
    return [name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def quantization_config(scheme: Scheme) -> dict:
    """config.json's quantization_config, as compressed-tensors 0.20 writes it for llm-compressor's presets."""
    return {"config_groups": {"group_0": scheme.config_group()}, "format": scheme.format,
            "global_compression_ratio": None, "ignore": ["lm_head"], "kv_cache_scheme": None,
            "quant_method": "compressed-tensors", "quantization_status": "compressed", "sparsity_config": {},
            "transform_config": {}}


def config_json(config, dtype: torch.dtype, scheme: Optional[Scheme]) -> str:
    config = copy.deepcopy(config)
    config.architectures = architectures(config)
    config.dtype = dtype  # transformers writes it as "dtype" (and reads "torch_dtype" too)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    data = json.loads(config.to_json_string(use_diff=True))  # as save_pretrained writes it
    data.pop("_name_or_path", None)
    if scheme is not None:
        data["quantization_config"] = quantization_config(scheme)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def generation_config_json(model: Any, config, from_disk: bool) -> str:
    from transformers import GenerationConfig

    gen = None
    if from_disk and (Path(model) / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(model)
    elif not from_disk:
        gen = getattr(model, "generation_config", None)
    if gen is None:
        gen = GenerationConfig.from_model_config(config)
    return gen.to_json_string(use_diff=True)


def save_tokenizer(tokenizer, chat_template: Optional[str], directory: Path) -> list[str]:
    """Write the tokenizer files (and chat template) into `directory`; returns the file names written."""
    before = set(p.name for p in directory.iterdir())
    if chat_template is not None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return sorted(set(p.name for p in directory.iterdir()) - before)


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def index_json(weight_map: dict[str, str], total_size: int) -> str:
    return json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
                      indent=2) + "\n"


def model_card(info: dict) -> str:
    """A README.md: readable text plus the same facts as a JSON block that `read_card` parses."""
    parity = info.get("parity")
    if parity is None:
        measured = "Not measured: export with `verify=True` (`--verify`) to record it."
    else:
        measured = (f"Reloaded with {parity['reader']}: max |logit difference| {parity['max_abs_logit_diff']:.3g} "
                    f"against {parity['reference']}, over {parity['tokens']} tokens.")
    quant = info["quantization"]
    lines = [
        "---", "library_name: transformers", "tags: [slipstream, vllm" + (", compressed-tensors" if quant else "") + "]",
        "---", "", f"# {info['name']}", "",
        f"Exported for vLLM by slipstream {info['slipstream_version']}.", "",
        f"- architecture: {', '.join(info['architectures'])}; dtype: {info['dtype']}",
        f"- pipeline: `{info['pipeline']}`",
        f"- quantization: {quant or 'none (dense)'}",
        f"- LoRA: {info['lora']}",
        f"- parity: {measured}",
    ]
    lines += [f"- note: {n}" for n in info.get("notes", [])]
    return "\n".join(lines) + "\n\n" + _CARD_BEGIN + json.dumps(info, indent=2, sort_keys=True) + _CARD_END + "\n"


def read_card(directory: str | Path) -> dict:
    """The facts block of an exported directory's README.md."""
    text = (Path(directory) / "README.md").read_text(encoding="utf-8")
    start, end = text.find(_CARD_BEGIN), text.find(_CARD_END)
    if start < 0 or end < 0:
        raise ValueError(f"{directory}/README.md has no slipstream facts block")
    return json.loads(text[start + len(_CARD_BEGIN):end])
