"""config.json read without transformers (config_json.py) says what AutoConfig says for every key the GGUF exporter
reads: on a config.json that holds only the required keys (the class defaults fill the rest), on what
save_pretrained writes for each tiny test family, and on a multimodal Gemma 3 wrapper."""
from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, CONFIG_MAPPING

import models
from slipstream.backends.errors import ExportError
from slipstream.backends.gguf.arch import resolve
from slipstream.backends.gguf.config_json import DEFAULTS, read_config

REQUIRED = dict(hidden_size=64, num_hidden_layers=12, num_attention_heads=4, intermediate_size=128, vocab_size=300)
READ = ("num_key_value_heads", "partial_rotary_factor", "max_position_embeddings", "rms_norm_eps", "rope_theta",
        "rope_scaling", "tie_word_embeddings", *REQUIRED)
GEMMA_READ = ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar")


def _same_for_gguf(ours, theirs) -> None:
    read = READ + (GEMMA_READ if ours.model_type.startswith("gemma") else ()) + \
        (("layer_types",) if ours.model_type == "gemma3_text" else ())  # arch.py reads layer_types for gemma3 only
    for key in read:
        assert getattr(ours, key, None) == getattr(theirs, key, None), key
    assert resolve(ours).head_dim == resolve(theirs).head_dim
    assert resolve(ours).name == resolve(theirs).name


@pytest.mark.parametrize("model_type", sorted(DEFAULTS))
def test_a_bare_config_gets_the_class_defaults(model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, **REQUIRED}))
    _same_for_gguf(read_config(tmp_path / "config.json"), AutoConfig.from_pretrained(tmp_path))


def test_every_supported_model_type_has_defaults():
    from slipstream.backends.gguf.arch import ARCHS

    assert set(ARCHS) - {"gemma3"} == set(DEFAULTS)  # gemma3 (multimodal) is read through its text_config
    assert all(t in CONFIG_MAPPING for t in DEFAULTS)


@pytest.mark.parametrize("family", models.SPINE_FAMILIES)
def test_saved_configs_read_alike(family, tmp_path):
    overrides = {"llama": dict(rope_scaling={"type": "linear", "factor": 2.0})}.get(family, {})
    config = models._config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    config.save_pretrained(tmp_path)
    _same_for_gguf(read_config(tmp_path / "config.json"), AutoConfig.from_pretrained(tmp_path))


def test_gemma3_multimodal_wrapper_reads_its_text_config(tmp_path):
    from transformers import Gemma3Config

    Gemma3Config(text_config=dict(REQUIRED, sliding_window_pattern=3)).save_pretrained(tmp_path)
    ours = read_config(tmp_path / "config.json")
    assert ours.model_type == "gemma3_text" and ours._name_or_path == tmp_path.name
    _same_for_gguf(ours, AutoConfig.from_pretrained(tmp_path).text_config)


def test_missing_required_key_and_malformed_file_are_clear_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "qwen2", **{k: v for k, v in REQUIRED.items() if k != "vocab_size"}}))
    with pytest.raises(ExportError, match="no 'vocab_size'"):
        resolve(read_config(path))
    path.write_text("{not json")
    with pytest.raises(ExportError, match="could not be read"):
        read_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(ExportError, match="not a model config"):
        read_config(path)
