"""GGUF export, proven in llama.cpp: F32/F16 logits of seven tiny families against transformers, a Q4_K_M file
against transformers on the dequantized weights, a merged LoRA, a checkpoint directory read lazily, and bad input
(no file left behind). The files carry a 1,280-token cut of the Llama 3 tokenizer (small_tokenizer.py), except the
checkpoint test's, which carries the full one."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

import models
import slipstream
from slipstream.backends.gguf.arch import ExportError
from small_tokenizer import KEEP, VOCAB, small_llama3

import llama_cpp
import gguf

PROMPT = 30
FAMILY_OVERRIDES = {"gemma2": dict(query_pre_attn_scalar=16), "gemma3": dict(query_pre_attn_scalar=16)}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return small_llama3(tmp_path_factory.mktemp("small-llama3"))


def build(family: str, vocab_size: int = VOCAB, **overrides):
    model = models.build(family, vocab_size=vocab_size, **{**FAMILY_OVERRIDES.get(family, {}), **overrides})
    return model.eval()


def prompt_ids(seed: int = 5) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(2, KEEP, (PROMPT - 1,), generator=g).tolist()


@contextlib.contextmanager
def plain_cpu_weights():
    """llama.cpp repacks quantized weights for the CPU it finds (AMX tiles, interleaved AVX/NEON blocks) unless
    `use_extra_bufts` is off. Its AMX matmul segfaults on K-quant files on AMX (Sapphire Rapids-class) machines
    (ggml-org/llama.cpp#20824; seen here with llama-cpp-python 0.3.36), and repacked kernels would tie the
    oracle's numbers to the machine. `Llama()` takes no such flag, so the default parameters it starts from are
    wrapped while it loads."""
    module = llama_cpp.llama_cpp
    defaults = module.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        module.llama_model_default_params = defaults


def llama_cpp_model(path: Path) -> llama_cpp.Llama:
    with plain_cpu_weights():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0,
                              n_threads=1)
    assert not llm.model_params.use_extra_bufts
    return llm


def llama_cpp_logits(path_or_model: Path | llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm = path_or_model if isinstance(path_or_model, llama_cpp.Llama) else llama_cpp_model(path_or_model)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def assert_logits(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    assert np.abs(got - want).max() <= atol, np.abs(got - want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0


class Fp16TableGelu(torch.nn.Module):
    """llama.cpp's CPU GELU reads an fp16 lookup table (GGML_GELU_FP16): input and output rounded to fp16. That
    alone parts Gemma's logits from transformers' by ~3e-4; with it emulated they agree to ~2e-5."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x.half().float()).half().float()


def as_llama_cpp_computes(model):
    if model.config.model_type.startswith("gemma"):
        for layer in model.model.layers:
            layer.mlp.act_fn = Fp16TableGelu(layer.mlp.act_fn)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"])
def test_f32_and_f16_files_match_transformers_in_llama_cpp(family, tokenizer, tmp_path):
    model = build(family)
    ids = prompt_ids()
    plain = hf_logits(model, ids)
    want = hf_logits(as_llama_cpp_computes(copy.deepcopy(model)), ids)
    assert_logits(want, plain, 1e-3)  # the emulation is a small change
    for quant, atol in (("f32", 1e-4), ("f16", 2e-2)):
        path = slipstream.export(model, tmp_path / f"{family}-{quant}.gguf", quant=quant, tokenizer=tokenizer,
                                 progress=False)
        assert_logits(llama_cpp_logits(path, ids), want, atol)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{family}-f16.gguf", f"{family}-f32.gguf"]


LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)


@pytest.mark.parametrize("family,overrides", [
    ("mistral", {}),                                                   # a Mistral checkpoint is GGUF "llama"
    ("llama", dict(head_dim=32, rope_scaling=LLAMA3_ROPE)),            # head_dim != hidden/heads, rope_freqs tensor
    ("qwen2", dict(rope_scaling=dict(rope_type="linear", factor=4.0))),  # linear rope scaling
    ("qwen2", dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
], ids=["mistral", "llama-llama3-rope-head-dim", "qwen2-linear-rope", "qwen2-yarn"])
def test_rope_scaling_head_dim_and_mistral(family, overrides, tokenizer, tmp_path):
    model = build(family, **overrides)
    path = slipstream.export(model, tmp_path / "m.gguf", quant="f32", tokenizer=tokenizer, progress=False)
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert ("rope_freqs.weight" in names) == ("rope_scaling" in overrides and family == "llama")
    ids = prompt_ids()
    want = hf_logits(model, ids)
    assert_logits(llama_cpp_logits(path, ids), want, 1e-4)
    if "rope_scaling" in overrides:  # the scaling is live: without it transformers computes other logits
        unscaled = build(family, **{k: v for k, v in overrides.items() if k != "rope_scaling"})
        assert np.abs(hf_logits(unscaled, ids) - want).max() > 1e-3


def _dequantized_model(model, path: Path):
    """`model` with every weight replaced by what the GGUF file stores for it (gguf's own dequantizer)."""
    reader = gguf.GGUFReader(path)
    stored = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
              for t in reader.tensors}
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, model.config.num_hidden_layers)
    state = model.state_dict()
    for name in state:
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        state[name] = torch.from_numpy(np.ascontiguousarray(stored[gguf_name])).reshape(state[name].shape)
    model.load_state_dict(state)
    return model, {t.name: t.tensor_type for t in reader.tensors}


def test_q4_k_m_file_equals_llama_cpps_own_and_tracks_its_dequantized_weights(tokenizer, tmp_path):
    """Our Q4_K_M file holds the tensors llama-quantize writes for the same F32 file (so llama.cpp computes the same
    logits), and those logits follow transformers on the dequantized weights. Not to 1e-3: ggml's CPU K-quant dot
    products quantize the activations to 8 bits as well, which on this model costs ~3e-2 (2 % of the largest logit)
    for llama.cpp's own file exactly as for ours; emulating that quantization does not close it, as the emulated
    reference differs from itself by ~1e-2 between fp32 and fp64 (docs/gguf.md)."""
    model = build("qwen3", hidden_size=256, intermediate_size=512, head_dim=64)
    ours = slipstream.export(model, tmp_path / "q4km.gguf", quant="q4_k_m", tokenizer=tokenizer, progress=False)
    f32 = slipstream.export(model, tmp_path / "f32.gguf", quant="f32", tokenizer=tokenizer, progress=False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp_path / "theirs.gguf").encode(), params) == 0
    theirs = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(tmp_path / "theirs.gguf").tensors}
    mine = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(ours).tensors}
    assert mine.keys() == theirs.keys()
    assert [n for n in mine if mine[n][0] != theirs[n][0]] == []
    if platform.machine() == "x86_64":  # llama.cpp's quantizer is built without FMA there: bytes agree exactly
        assert [n for n in mine if mine[n][1] != theirs[n][1]] == []
    dequantized, types = _dequantized_model(model, ours)
    Q = gguf.GGMLQuantizationType
    # llama.cpp's use_more_bits: of 2 layers only the last gets the Q6_K ffn_down
    assert types["blk.0.attn_q.weight"] == Q.Q4_K and types["blk.0.ffn_down.weight"] == Q.Q4_K
    assert types["blk.1.ffn_down.weight"] == Q.Q6_K and types["output.weight"] == Q.Q6_K
    assert types["blk.0.attn_norm.weight"] == Q.F32
    ids = prompt_ids()
    got, want = llama_cpp_logits(ours, ids), hf_logits(dequantized, ids)
    np.testing.assert_array_equal(got, llama_cpp_logits(tmp_path / "theirs.gguf", ids))
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_lora_is_merged(tokenizer, tmp_path):
    import peft
    base = build("llama")
    model = peft.get_peft_model(build("llama"), peft.LoraConfig(r=4, target_modules="all-linear"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    merged = build("llama")
    merged.load_state_dict(slipstream.merge_lora(model))
    path = slipstream.export(model, tmp_path / "lora.gguf", quant="f32", tokenizer=tokenizer, progress=False)
    ids = prompt_ids()
    got = llama_cpp_logits(path, ids)
    assert_logits(got, hf_logits(merged, ids), 1e-4)
    assert np.abs(got - hf_logits(base, ids)).max() > 1e-2  # the adapter is in


@pytest.mark.slow
def test_checkpoint_directory_and_cli(shipped_tokenizer, tmp_path):
    """End to end with the full Llama 3 tokenizer (128,256 tokens, 280k merges) in the file."""
    from slipstream.cli import main

    tokenizer = shipped_tokenizer("llama3")[1]  # the demo's
    model = build("qwen2", vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    assert main(["export", "gguf", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf"), "--quant", "f32", "--quiet",
                 "--modelfile"]) == 0
    assert (tmp_path / "Modelfile").read_text().strip().endswith("FROM ./m.gguf")
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("m.gguf", "Modelfile"):  # as open() would make them (readable by a service user), not 0600
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    ids = prompt_ids()
    llm = llama_cpp_model(tmp_path / "m.gguf")
    assert_logits(llama_cpp_logits(llm, ids), hf_logits(model, ids), 1e-4)
    template = llm.metadata["tokenizer.chat_template"]  # as llama.cpp reads it (gguf.GGUFReader: tens of seconds here)
    assert template == tokenizer.chat_template and "start_header_id" in template


# ---- bad input: a clear error and nothing left behind -----------------------------------------------------------

def _assert_nothing_written(directory: Path, keep: set[str] = frozenset()) -> None:
    assert {p.name for p in directory.iterdir()} == set(keep)


def test_unsupported_architecture_and_unknown_quant(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB))
    with pytest.raises(ExportError, match="supported: .*llama.*qwen2"):
        slipstream.export(gpt2, tmp_path / "x.gguf", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown GGUF quant 'q4_k_x'.*q4_k_m"):
        slipstream.export(build("llama"), tmp_path / "x.gguf", quant="q4_k_x", tokenizer=tokenizer)
    _assert_nothing_written(tmp_path)


def test_corrupt_checkpoint_and_missing_config_keys(tokenizer, tmp_path):
    ckpt = tmp_path / "ckpt"
    build("qwen2").save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    weights = next(ckpt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        slipstream.export(ckpt, tmp_path / "x.gguf")
    config = json.loads((ckpt / "config.json").read_text())
    del config["num_hidden_layers"]
    broken = tmp_path / "broken"
    build("qwen2").save_pretrained(broken)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="num_hidden_layers"):
        slipstream.export(broken, tmp_path / "x.gguf", tokenizer=tokenizer)
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


def test_disk_full_leaves_no_file_and_keeps_an_existing_one(tokenizer, tmp_path, monkeypatch):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous export")
    calls = []

    def full(self, tensor, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return original(self, tensor, *args, **kwargs)
    original = gguf.GGUFWriter.write_tensor_data
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    with pytest.raises(OSError, match="No space left"):
        slipstream.export(build("llama"), target, quant="q8_0", tokenizer=tokenizer, progress=False)
    assert target.read_bytes() == b"previous export"
    _assert_nothing_written(tmp_path, {"m.gguf"})
