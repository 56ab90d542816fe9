"""Hugging Face config + tensors -> llama.cpp's GGUF architecture: metadata keys, tensor names and the per-arch
tensor transforms (llama's Q/K row permutation, Gemma's `1 + w` norms).

Tensor names come from the `gguf` package's own name map (the table llama.cpp's converter uses); this module adds
what that table does not decide: which HF `model_type` is which GGUF arch, the hyperparameters, and the transforms.
Facts: ../shared/notes/exports.md (copied into docs/gguf.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from slipstream.backends.errors import ExportError

# HF model_type -> GGUF architecture name
ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
         "gemma2": "gemma2", "gemma3": "gemma3", "gemma3_text": "gemma3", "phi3": "phi3"}
_GEMMA = ("gemma", "gemma2", "gemma3")


@dataclass(frozen=True)
class Arch:
    name: str                   # GGUF architecture
    config: Any                 # the HF text config
    n_layers: int

    @property
    def head_dim(self) -> int:
        c = self.config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def resolve(config: Any) -> Arch:
    """The GGUF arch for an HF config (its text config for multimodal wrappers); unknown -> ExportError."""
    config = getattr(config, "text_config", None) or config
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise ExportError(f"GGUF export does not support model_type {model_type!r}; supported: "
                          f"{', '.join(sorted(ARCHS))}. Export a vLLM/transformers checkpoint instead.")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if getattr(config, key, None) is None:
            raise ExportError(f"config.json of this {model_type} model has no {key!r}: the checkpoint is incomplete")
    return Arch(ARCHS[model_type], config, int(config.num_hidden_layers))


def metadata(arch: Arch) -> list[tuple[str, Callable]]:
    """(description, writer call) pairs: each call takes a gguf.GGUFWriter and adds one hyperparameter."""
    c, name = arch.config, arch.name
    heads, kv_heads = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    rotary = int(arch.head_dim * getattr(c, "partial_rotary_factor", 1.0))
    calls = [
        lambda w: w.add_context_length(int(c.max_position_embeddings)),
        lambda w: w.add_embedding_length(int(c.hidden_size)),
        lambda w: w.add_block_count(arch.n_layers),
        lambda w: w.add_feed_forward_length(int(c.intermediate_size)),
        lambda w: w.add_head_count(int(heads)),
        lambda w: w.add_head_count_kv(int(kv_heads)),
        lambda w: w.add_layer_norm_rms_eps(float(c.rms_norm_eps)),
        lambda w: w.add_rope_freq_base(float(_rope_theta(c))),
        lambda w: w.add_rope_dimension_count(rotary),
    ]
    if arch.head_dim != c.hidden_size // heads or name in _GEMMA:
        calls += [lambda w: w.add_key_length(arch.head_dim), lambda w: w.add_value_length(arch.head_dim)]
    if name in ("gemma2", "gemma3"):
        _check_gemma_scale(arch)
        if getattr(c, "sliding_window", None):
            calls.append(lambda w: w.add_sliding_window(int(c.sliding_window)))
    if name == "gemma2":
        calls += [lambda w: w.add_attn_logit_softcapping(float(c.attn_logit_softcapping or 0.0)),
                  lambda w: w.add_final_logit_softcapping(float(c.final_logit_softcapping or 0.0))]
    if name == "gemma3":
        _check_gemma3_layers(arch)
        if getattr(c, "final_logit_softcapping", None):
            calls.append(lambda w: w.add_final_logit_softcapping(float(c.final_logit_softcapping)))
    calls += _rope_scaling(arch)
    return calls


def _rope_theta(c: Any) -> float:
    theta = getattr(c, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return theta


def _rope_scaling(arch: Arch) -> list[Callable]:
    scaling = getattr(arch.config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return []
    if kind == "linear":
        return [lambda w: w.add_rope_scaling_type(_gguf().RopeScalingType.LINEAR),
                lambda w: w.add_rope_scaling_factor(float(scaling["factor"]))]
    if kind == "yarn":
        orig = scaling.get("original_max_position_embeddings", arch.config.max_position_embeddings)
        return [lambda w: w.add_rope_scaling_type(_gguf().RopeScalingType.YARN),
                lambda w: w.add_rope_scaling_factor(float(scaling["factor"])),
                lambda w: w.add_rope_scaling_orig_ctx_len(int(orig))]
    if kind == "llama3" and arch.name == "llama":
        return []  # carried by the rope_freqs tensor (extra_tensors)
    raise ExportError(f"rope scaling {kind!r} of this {arch.name} model has no GGUF form slipstream writes "
                      "(supported: linear, yarn, llama3 on llama)")


def _check_gemma_scale(arch: Arch) -> None:
    """llama.cpp scales Gemma 2/3 queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B size only)."""
    c = arch.config
    scalar = getattr(c, "query_pre_attn_scalar", None)
    allowed = {arch.head_dim, c.hidden_size // c.num_attention_heads}
    if scalar is not None and scalar not in allowed:
        raise ExportError(f"{arch.name}: query_pre_attn_scalar={scalar} is neither head_dim nor hidden/heads; "
                          "llama.cpp would scale the attention differently from transformers")


def _check_gemma3_layers(arch: Arch) -> None:
    """llama.cpp hard-codes Gemma 3's layer pattern: every 6th layer global, the others sliding."""
    types = getattr(arch.config, "layer_types", None)
    if types:
        expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(arch.n_layers)]
        if list(types) != expected:
            raise ExportError("gemma3: layer_types differ from llama.cpp's fixed pattern (every 6th layer global)")


def _gguf():
    import gguf
    return gguf


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved (NORM) rope layout, per head."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def transform(arch: Arch, hf_name: str, data: np.ndarray) -> np.ndarray:
    """The per-arch change a tensor needs on its way into GGUF."""
    c = arch.config
    if arch.name == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return llama_permute(data, c.num_attention_heads)
    if arch.name == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return llama_permute(data, getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    if arch.name in _GEMMA and hf_name.endswith("norm.weight"):
        return data + 1.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
    return data


def extra_tensors(arch: Arch) -> dict[str, np.ndarray]:
    """Tensors GGUF has and the checkpoint does not: llama 3's rope frequency factors."""
    scaling = getattr(arch.config, "rope_scaling", None) or {}
    if arch.name != "llama" or scaling.get("rope_type", scaling.get("type")) != "llama3":
        return {}
    factor, low, high = scaling["factor"], scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling["original_max_position_embeddings"]
    base, dim = _rope_theta(arch.config), arch.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_ctx / high, 1.0,
                       np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return {"rope_freqs.weight": factors.astype(np.float32)}
