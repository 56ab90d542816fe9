"""A checkpoint's config.json read with the json module, for GGUF export: importing transformers and building its
config class costs ~3 s of a ~10 s export, and GGUF needs only a few hyperparameters.

A config.json may leave out keys whose value is its config class's default (older writers do), so each supported
architecture's defaults for the keys `arch.py` reads are kept here as data; tests/backends/gguf/test_config_json.py
checks them against transformers' own classes, and that a stripped config.json reads the same as AutoConfig's.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from slipstream.backends.errors import ExportError

# Defaults shared by every supported class, then per model_type overrides (transformers' config classes);
# num_key_value_heads=None means "as many as the attention heads".
_COMMON = dict(num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-6,
               rope_theta=10000.0, rope_scaling=None, sliding_window=None, attn_logit_softcapping=None,
               final_logit_softcapping=None, query_pre_attn_scalar=None, layer_types=None,
               tie_word_embeddings=False)
DEFAULTS = {
    "llama": dict(max_position_embeddings=2048),
    "mistral": dict(max_position_embeddings=131072, sliding_window=4096, num_key_value_heads=8),
    "qwen2": dict(max_position_embeddings=32768, num_key_value_heads=32),
    "qwen3": dict(max_position_embeddings=32768, num_key_value_heads=32, head_dim=128),
    "gemma": dict(max_position_embeddings=8192, num_key_value_heads=16, head_dim=256, tie_word_embeddings=True),
    "gemma2": dict(max_position_embeddings=8192, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True,
                   sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   query_pre_attn_scalar=256),
    "gemma3_text": dict(max_position_embeddings=131072, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True,
                        sliding_window=4096, query_pre_attn_scalar=256, rope_theta=1000000.0),
    "phi3": dict(max_position_embeddings=4096, rms_norm_eps=1e-5, partial_rotary_factor=1.0),
}
_GEMMA3_PATTERN = 6  # Gemma3TextConfig: every 6th layer global unless sliding_window_pattern says otherwise


def read_config(path: str | Path) -> SimpleNamespace:
    """config.json as attributes, with the class defaults of its architecture filled in (the text config of a
    multimodal wrapper such as gemma3). An unknown model_type keeps only what the file holds: `arch.resolve`
    names the supported ones."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} could not be read: {e}; re-save the checkpoint's config.json") from e
    if not isinstance(raw, dict):
        raise ExportError(f"{path} holds a JSON {type(raw).__name__}, not an object: not a model config")
    raw.setdefault("_name_or_path", path.parent.name)  # general.name: the checkpoint's folder, as AutoConfig has it
    text = raw.get("text_config")
    if isinstance(text, dict) and raw.get("model_type") == "gemma3":
        raw = {"model_type": "gemma3_text", **text, "_name_or_path": raw["_name_or_path"]}
    model_type = raw.get("model_type")
    if model_type not in DEFAULTS:
        return SimpleNamespace(**raw)
    values = {**_COMMON, **DEFAULTS[model_type], **raw}
    if values["num_key_value_heads"] is None:
        values["num_key_value_heads"] = values.get("num_attention_heads")
    if model_type == "llama" and values["head_dim"] is None and values.get("hidden_size") \
            and values.get("num_attention_heads"):
        values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
    if model_type == "gemma3_text" and values["layer_types"] is None and values.get("num_hidden_layers"):
        pattern = values.get("sliding_window_pattern", _GEMMA3_PATTERN)
        values["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                 for i in range(values["num_hidden_layers"])]
    scaling = values["rope_scaling"]
    if isinstance(scaling, dict) and "type" in scaling and "rope_type" not in scaling:
        values["rope_scaling"] = {**scaling, "rope_type": scaling["type"]}  # as the classes normalise it
    return SimpleNamespace(**values)
