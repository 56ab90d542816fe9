"""Tiny random models of every family the spine must handle, built from configs in code (no downloads)."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

VOCAB = 256
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _config(family: str, **overrides):
    import transformers as tf
    common = {**COMMON, **{k: v for k, v in overrides.items() if k in COMMON}}
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    if family == "qwen3":
        return tf.Qwen3Config(**common, head_dim=16)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if family == "gemma":
        return tf.GemmaConfig(**common, head_dim=16)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=16, sliding_window=8, attn_implementation="eager")
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=8, layer_types=None,
                                   attn_implementation="eager")
    if family == "phi3":  # partial rotary exercises the rotary/pass-through split
        return tf.Phi3Config(**common, partial_rotary_factor=0.5)
    # families the library never names: they must work with no code change
    if family == "granite":
        return tf.GraniteConfig(**common)
    if family == "olmo2":
        return tf.Olmo2Config(**common)
    if family == "glm":  # interleaved partial rotary, fused gate/up projection
        return tf.GlmConfig(**common, head_dim=16)
    if family == "helium":  # interleaved rotary, norm weight upcast before weighting
        return tf.HeliumConfig(**common, head_dim=16)
    raise ValueError(f"unknown test family {family!r}")


SPINE_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "phi3")
UNNAMED_FAMILIES = ("granite", "olmo2", "glm", "helium")


def build(family: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides):
    config = _config(family, **overrides)
    for k, v in overrides.items():
        if k not in COMMON:
            setattr(config, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def rms_norms(module) -> int:
    """How many RMSNorm modules `module` holds (itself included)."""
    return sum(1 for m in module.modules() if type(m).__name__.endswith("RMSNorm"))


def expected_sites(model) -> dict[str, int]:
    """How many RMSNorms, gated-MLP activations, RoPE applications (q and k count apart) and attentions the model
    has."""
    layers = model.config.num_hidden_layers
    return {"fuse-rms-norm": rms_norms(model), "fuse-swiglu": layers, "fuse-rope": 2 * layers, "fuse-attention": layers}


def token_batch(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def assert_trains_alike(ref, opt, loss_at, steps: int = 3) -> None:
    """`steps` AdamW steps (lr 1e-3) on each model's trainable parameters, `loss_at(model, step)` giving the loss:
    the reference's loss really changes, and the optimized model's losses equal it within 1e-5 relative."""
    losses = []
    for model in (ref, opt):
        model.train()
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        run = []
        for step in range(steps):
            loss = loss_at(model, step)
            loss.backward()
            optim.step(), optim.zero_grad()
            run.append(loss.item())
        losses.append(run)
    assert losses[0][0] != losses[0][-1]  # it really trains
    for a, b in zip(*losses):
        assert abs(a - b) <= 1e-5 * abs(b)
