"""LoRA as a vLLM adapter dir: peft loads it onto the reloaded base and gives the source's logits; vLLM's limits
(rank, bias, DoRA, modules_to_save, one adapter) are refused before anything is written, naming the way out."""
from __future__ import annotations

import json

import pytest
import torch

import slipstream
from slipstream.backends.errors import ExportError
from vllm_helpers import assert_parity, build, model_logits, reloaded_logits

import peft
pytestmark = pytest.mark.filterwarnings("ignore:vLLM export without a tokenizer")


def lora_model(family="llama", **config):
    model = peft.get_peft_model(build(family), peft.LoraConfig(**{"r": 4, "target_modules": "all-linear", **config}))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_adapter_dir_loads_onto_the_base_with_peft(family, tmp_path):
    from safetensors import safe_open

    model = lora_model(family)
    out = slipstream.export(model, tmp_path / "a", format="vllm", lora="adapter", verify=True, progress=False)
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    with safe_open(out / "adapter" / "adapter_model.safetensors", framework="pt") as st:
        keys = list(st.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert_parity(out, model, 1e-5)  # base + adapter (peft) against the source peft model
    from slipstream.backends.vllm.verify import logits, prompt_ids, reload
    base = reload(out, torch.float32, adapter=False)
    plain = build(family)
    assert torch.equal(logits(base, prompt_ids(256)), model_logits(plain))  # the base holds no LoRA
    assert float((reloaded_logits(out) - model_logits(plain)).abs().max()) > 1e-2


def test_adapter_with_a_quantized_base(tmp_path):
    model = lora_model("llama")
    out = slipstream.export(model, tmp_path / "q", format="vllm", quant="w8a8", lora="adapter", verify=True,
                            progress=False)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    from slipstream.backends.vllm.layout import read_card
    assert read_card(out)["parity"]["max_abs_logit_diff"] <= 1e-4


@pytest.mark.parametrize("config,match", [
    (dict(r=32), "rank 32 is above vLLM's max_lora_rank 16: serve with --max-lora-rank 32.*lora='merge'"),
    (dict(rank_pattern={"q_proj": 64}), "rank 64 is above"),
    (dict(bias="lora_only"), "trains biases.*lora='merge'"),
    (dict(use_dora=True), "DoRA.*merge_and_unload"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save.*lora='merge'"),
], ids=["rank", "rank-pattern", "bias", "dora", "modules-to-save"])
def test_vllm_limits_are_refused_before_writing(config, match, tmp_path):
    with pytest.raises(ExportError, match=match):
        slipstream.export(lora_model(**config), tmp_path / "x", format="vllm", lora="adapter", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_rank_limit_is_an_option_and_other_refusals(tmp_path):
    out = slipstream.export(lora_model(r=32), tmp_path / "r32", format="vllm", lora="adapter", max_lora_rank=32,
                            progress=False)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 32
    with pytest.raises(ExportError, match="has none.*lora='merge'"):
        slipstream.export(build("llama"), tmp_path / "x", format="vllm", lora="adapter")
    with pytest.raises(ValueError, match="unknown lora mode 'fold'"):
        slipstream.export(lora_model(), tmp_path / "x", format="vllm", lora="fold")
    ckpt = tmp_path / "ckpt"
    build("llama").save_pretrained(ckpt)
    with pytest.raises(ExportError, match="in-memory peft model"):
        slipstream.export(ckpt, tmp_path / "x", format="vllm", lora="adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "r32"]
