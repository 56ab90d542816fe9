"""vLLM export, read back by an independent reader (transformers; compressed-tensors for quantized checkpoints;
peft for adapters): dense fp32 to 1e-5, every quant scheme to 1e-4 against the source on our dequantized weights,
packed weights of our quantize-weights pass written as they are, merged LoRA, sharding, the model card, tokenizer
files, a checkpoint directory and the CLI."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open

import slipstream
from slipstream.backends.vllm import SCHEMES
from slipstream.backends.vllm.layout import read_card
from slipstream.gc_pause import load_auto_tokenizer
from vllm_helpers import assert_parity, build, dequantized_reference, model_logits, reloaded_logits

import compressed_tensors  # noqa: F401  (the test-time reader must be installed)
pytestmark = pytest.mark.filterwarnings("ignore:vLLM export without a tokenizer")


def _tensors(directory) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_dense_fp32_matches_the_source_and_the_card_records_it(family, tmp_path):
    model = build(family)
    out = slipstream.export(model, tmp_path / "dense", format="vllm", verify=True, progress=False)
    assert_parity(out, model, 1e-5)
    card = read_card(out)
    assert card["parity"]["max_abs_logit_diff"] <= 1e-5 and card["quantization"] is None
    assert card["slipstream_version"] == slipstream.__version__
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__] and config["dtype"] == "float32"
    assert "quantization_config" not in config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


@pytest.mark.parametrize("quant", list(SCHEMES))
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_quantized_matches_the_source_on_dequantized_weights(family, quant, tmp_path):
    model = build(family)
    out = slipstream.export(model, tmp_path / quant, format="vllm", quant=quant, verify=True, progress=False)
    assert_parity(out, dequantized_reference(model, out), 1e-4)
    assert read_card(out)["parity"]["max_abs_logit_diff"] <= 1e-4
    assert float((reloaded_logits(out) - model_logits(model)).abs().max()) > 1e-4  # the quantization is live
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["format"] == SCHEMES[quant].format and qconfig["ignore"] == ["lm_head"]
    stored = _tensors(out)
    assert stored["lm_head.weight"].dtype == torch.float32 and "model.embed_tokens.weight" in stored


def test_bf16_dense_equals_the_source_in_bf16(tmp_path):
    model = build("qwen3")
    out = slipstream.export(model, tmp_path / "bf16", format="vllm", dtype="bfloat16", progress=False)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in _tensors(out).values())
    from transformers import AutoModelForCausalLM
    reference = AutoModelForCausalLM.from_config(model.config, dtype=torch.bfloat16)  # fp32 rope, as loaded
    reference.load_state_dict(model.state_dict())  # cast to bf16 on copy
    assert_parity(out, reference, 0.0, dtype=torch.bfloat16)


@pytest.mark.parametrize("fmt,quant", [("int4", "w4a16"), ("int8", "w8a8"), ("int8", "w8a16"), ("fp8", "fp8")])
def test_weights_of_our_quantize_pass_are_written_as_they_are(fmt, quant, tmp_path):
    from slipstream.modules import QuantLinear
    from slipstream.passes.quantize_weights import QuantizeWeights, QuantizeWeightsOptions

    model = build("llama")
    QuantizeWeights(QuantizeWeightsOptions(format=fmt)).run_module(model)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, QuantLinear)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*quantized again")
        out = slipstream.export(model, tmp_path / quant, format="vllm", quant=quant, verify=True, progress=False)
    stored = _tensors(out)
    prefix = "model.layers.0.self_attn.q_proj."
    if fmt == "int4":
        assert torch.equal(stored[prefix + "weight_packed"].view(torch.uint8), q.packed)
    elif quant == "w8a16":
        assert torch.equal((stored[prefix + "weight_packed"].view(torch.uint8).to(torch.int16) - 128).to(torch.int8),
                           q.packed)
    else:
        assert torch.equal(stored[prefix + "weight"].view(torch.uint8), q.packed.view(torch.uint8))
    assert torch.equal(stored[prefix + "weight_scale"].reshape(-1), q.scales.reshape(-1))
    assert_parity(out, model, 1e-4)  # the model as it runs, QuantLinear on its own weights
    assert read_card(out)["parity"]["max_abs_logit_diff"] <= 1e-4
    assert any("no re-quantization" in n for n in read_card(out)["notes"])


def test_incompatible_packed_weights_are_quantized_again_with_a_note(tmp_path):
    from slipstream.passes.quantize_weights import QuantizeWeights, QuantizeWeightsOptions

    model = build("llama")
    QuantizeWeights(QuantizeWeightsOptions(format="nf4")).run_module(model)
    with pytest.warns(UserWarning, match="dequantized and quantized again"):
        out = slipstream.export(model, tmp_path / "w4", format="vllm", quant="w4a16", verify=True, progress=False)
    card = read_card(out)
    assert any("nf4 weights are not w4a16's int4" in n for n in card["notes"])
    assert card["parity"]["max_abs_logit_diff"] <= 1e-4


def test_merged_lora(tmp_path):
    import peft
    model = peft.get_peft_model(build("qwen3"), peft.LoraConfig(r=4, target_modules="all-linear"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    out = slipstream.export(model, tmp_path / "merged", format="vllm", verify=True, progress=False)
    assert_parity(out, model, 1e-5)
    assert float((reloaded_logits(out) - model_logits(build("qwen3"))).abs().max()) > 1e-2  # the adapter is in
    assert not any("lora" in k for k in _tensors(out))
    assert read_card(out)["parity"]["max_abs_logit_diff"] <= 1e-5


def test_small_shards_and_a_correct_index(tmp_path):
    model = build("llama")
    out = slipstream.export(model, tmp_path / "sharded", format="vllm", shard_size="100KB", progress=False)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    where = {}
    for f in files:
        with safe_open(out / f, framework="pt") as st:
            where.update({k: f for k in st.keys()})
    assert index["weight_map"] == where
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in _tensors(out).values())
    assert_parity(out, model, 1e-5)


def test_tokenizer_and_chat_template_travel(shipped_tokenizer, tmp_path):
    tokenizer = shipped_tokenizer("llama3")[1]  # the demo's
    model = build("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128)
    out = slipstream.export(model, tmp_path / "tok", format="vllm", tokenizer=tokenizer, dtype="bfloat16",
                            progress=False)
    again = load_auto_tokenizer(out)
    assert again("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert again.chat_template == tokenizer.chat_template and "start_header_id" in again.chat_template
    assert set(read_card(out)["tokenizer_files"]) >= {"tokenizer.json", "tokenizer_config.json"}
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == model.config.eos_token_id


def test_checkpoint_directory_through_the_cli(tmp_path):
    from slipstream.cli import main

    model = build("qwen3")
    model.save_pretrained(tmp_path / "ckpt")
    assert main(["export", "vllm", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--quant", "w8a8", "--verify",
                 "--quiet", "--shard-size", "200KB"]) == 0
    card = read_card(tmp_path / "out")
    assert card["pipeline"] == "none (checkpoint directory)" and card["quantization"]["scheme"] == "w8a8"
    assert card["parity"]["max_abs_logit_diff"] <= 1e-4
    assert_parity(tmp_path / "out", dequantized_reference(model, tmp_path / "out"), 1e-4)
    assert main(["export", "vllm", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--quiet"]) == 2  # exists
    assert main(["export", "vllm", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--quiet", "--overwrite"]) == 0
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not 0700
