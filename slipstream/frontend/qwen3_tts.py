"""Qwen3-TTS models as plain nn.Modules: build from a config, load a local checkpoint, make prompts.

Nothing here fuses anything: `slipstream.optimize(model)` treats the talker and code predictor like any decoder
(their layer stacks are units; the passes match by graph shape). This module only gets the model built without
the audio stack (see qwen_tts_import.py) and without the hub:
- `config(shape)`: a tiny VoiceDesign config for tests and examples, or the released 1.7B shape;
- `build(config)`: the model with random weights; `load(path)`: the released layout (config.json + safetensors,
  optionally `speech_tokenizer/` for the 12 Hz codec: `load_codec(path)`);
- `prompt(...)`: the token ids `Qwen3TTSForConditionalGeneration.generate` takes for text + voice description.
"""
from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import torch
from torch import nn

from . import qwen_tts_import

TEXT_SPECIALS = dict(im_start_token_id=250, im_end_token_id=251, tts_pad_token_id=252, tts_bos_token_id=253,
                     tts_eos_token_id=254)   # tiny text vocab (256): the ids the prompt format uses
_NL = 198  # a "newline" id in the tiny vocab (any id works for random weights)


def _tiny(codebooks: int, codebook_size: int, layers: int) -> tuple[dict, dict]:
    vocab = codebook_size + 1024  # generate() suppresses the top 1024 ids (the specials live there)
    specials = {name: codebook_size + i for i, name in enumerate(
        ("codec_pad_id", "codec_bos_id", "codec_think_id", "codec_nothink_id", "codec_think_bos_id",
         "codec_think_eos_id"))}
    talker = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, text_hidden_size=48, text_vocab_size=256,
                  rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "interleaved": True},
                  # EOS outside the vocabulary: fixed-length generation (a random model would stop anywhere)
                  codec_eos_token_id=vocab,
                  codec_language_id={"english": codebook_size + 8, "chinese": codebook_size + 9},
                  spk_id={}, spk_is_dialect={}, max_position_embeddings=512, **specials)
    predictor = dict(vocab_size=codebook_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    return talker, predictor


def _released_1_7b() -> tuple[dict, dict]:
    """The released 12 Hz 1.7B VoiceDesign shapes (../shared/notes/qwen3_tts.md); specials as in the release."""
    talker = dict(vocab_size=3072, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, text_hidden_size=2048,
                  text_vocab_size=151936, rope_theta=1e6, max_position_embeddings=32768,
                  rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True},
                  codec_eos_token_id=2150, codec_pad_id=2148, codec_bos_id=2149, codec_think_id=2154,
                  codec_nothink_id=2155, codec_think_bos_id=2156, codec_think_eos_id=2157,
                  codec_language_id={"english": 2050, "chinese": 2055}, spk_id={}, spk_is_dialect={})
    predictor = dict(vocab_size=2048, hidden_size=1024, intermediate_size=3072, num_hidden_layers=5,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=65536)
    return talker, predictor


def config(shape: str = "tiny", *, codebooks: int = 4, codebook_size: int = 64, layers: int = 2,
           attn_implementation: str = "sdpa", **talker_overrides):
    """A Qwen3TTSConfig: `tiny` (VoiceDesign, `codebooks` codebooks, `layers` layers in talker and code predictor)
    or `1.7b` (the released shapes, 16 codebooks; random weights)."""
    if shape == "tiny":
        talker, predictor = _tiny(codebooks, codebook_size, layers)
        text = TEXT_SPECIALS
    elif shape == "1.7b":
        talker, predictor, codebooks, text = *_released_1_7b(), 16, {}
    else:
        raise ValueError(f"unknown Qwen3-TTS shape {shape!r}; available: tiny, 1.7b")
    talker = {**talker, **talker_overrides, "num_code_groups": codebooks,
              "code_predictor_config": {**predictor, "num_code_groups": codebooks}}
    cfg = qwen_tts_import.configuration().Qwen3TTSConfig(
        talker_config=talker, tts_model_type="voice_design", tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size=shape, **text)
    set_attn_implementation(cfg, attn_implementation)
    return cfg


def set_attn_implementation(cfg, name: str) -> None:
    for c in (cfg, cfg.talker_config, cfg.talker_config.code_predictor_config):
        c._attn_implementation = name


def _instantiate(cls, cfg, dtype: torch.dtype, seed: int | None, device: str | torch.device) -> nn.Module:
    """`cls(cfg)` with random weights (seeded unless seed is None), built on `device`, in `dtype`, in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = cls(cfg)
    return model.to(dtype).eval()


def build(cfg, dtype: torch.dtype = torch.float32, seed: int | None = 0, device: str | torch.device = "cpu"):
    """Qwen3TTSForConditionalGeneration with random weights (seeded), in eval mode."""
    return _instantiate(qwen_tts_import.modeling().Qwen3TTSForConditionalGeneration, cfg, dtype, seed, device)


def codec_config(attn_implementation: str = "sdpa", **overrides):
    """A tiny 12 Hz codec decoder config (Qwen3TTSTokenizerV2DecoderConfig: 2 transformer layers with a sliding
    window of 8, 4 quantizers of 32 codes, 8x upsampling); `overrides` set any field, e.g. the released ones."""
    fields = dict(codebook_size=32, hidden_size=64, latent_dim=64, codebook_dim=32, num_attention_heads=4,
                  num_key_value_heads=4, sliding_window=8, intermediate_size=128, num_hidden_layers=2,
                  num_quantizers=4, upsample_rates=(2, 2), upsampling_ratios=(2,), decoder_dim=32,
                  max_position_embeddings=128)
    cfg = qwen_tts_import.codec_configuration().Qwen3TTSTokenizerV2DecoderConfig(**{**fields, **overrides})
    cfg._attn_implementation = attn_implementation
    return cfg


def build_codec(cfg, dtype: torch.dtype = torch.float32, seed: int | None = 0, device: str | torch.device = "cpu"):
    """The 12 Hz codec decoder (codes [B, quantizers, frames] -> waveform) with random weights, in eval mode; load
    real weights with load_state_dict."""
    return _instantiate(qwen_tts_import.codec_modeling().Qwen3TTSTokenizerV2Decoder, cfg, dtype, seed, device)


def config_from_dict(data: dict, attn_implementation: str = "sdpa"):
    """Qwen3TTSConfig from a config.json dict. Its speaker-encoder sub-config takes no unknown keys (a plain
    save_pretrained adds some), so only the ones its constructor names are passed on."""
    mod = qwen_tts_import.configuration()
    data = dict(data)
    speaker = data.pop("speaker_encoder_config", None) or {}
    accepted = inspect.signature(mod.Qwen3TTSSpeakerEncoderConfig.__init__).parameters
    data["speaker_encoder_config"] = {k: v for k, v in speaker.items() if k in accepted}
    for key in ("architectures", "transformers_version", "_attn_implementation_autoset"):
        data.pop(key, None)
    cfg = mod.Qwen3TTSConfig(**data)
    set_attn_implementation(cfg, attn_implementation)
    return cfg


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: model.safetensors, or the shards a model.safetensors.index.json names."""
    from safetensors.torch import load_file
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def load(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
         attn_implementation: str = "sdpa"):
    """A Qwen3-TTS checkpoint directory (config.json + safetensors, as released or as save_pretrained writes it)
    -> Qwen3TTSForConditionalGeneration, eval mode. No hub access, no audio stack."""
    path = Path(path)
    cfg = config_from_dict(json.loads((path / "config.json").read_text()), attn_implementation)
    state = read_safetensors(path)
    dtype = dtype or next(iter(state.values())).dtype
    model = build(cfg, dtype=dtype, seed=None, device="meta")
    _load_state(model, state, path)
    return model.to(device)


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    tied = {k for k in missing if _is_tied(model, k)}
    if set(missing) - tied:
        raise ValueError(f"{path}: missing weights {sorted(set(missing) - tied)[:5]} (and {len(missing)} in all)")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    for buf_owner in model.modules():  # non-persistent buffers (rotary inv_freq) were built on meta: rebuild
        if hasattr(buf_owner, "rope_init_fn") and hasattr(buf_owner, "inv_freq"):
            inv_freq, _ = buf_owner.rope_init_fn(buf_owner.config, "cpu")
            buf_owner.register_buffer("inv_freq", inv_freq, persistent=False)
            buf_owner.original_inv_freq = buf_owner.inv_freq
    if tied:
        model.tie_weights()


def _is_tied(model: nn.Module, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and key.endswith("lm_head.weight")


def greedy(frames: int) -> dict:
    """generate() kwargs for `frames` codec frames, greedy in the talker and the code predictor. The first generated
    step is the prompt's last position, which yields no frame: frames + 1 steps give `frames` frames."""
    return dict(do_sample=False, subtalker_dosample=False, max_new_tokens=frames + 1)


def timed_greedy(model: nn.Module, request: dict, frames: int) -> tuple[torch.Tensor, float]:
    """(the first item's codes, on the CPU; seconds) of a greedy generate() of `frames` frames. The request's id
    tensors move to the model's device first; CUDA is synchronised around the call so the time is its own."""
    device = next(model.parameters()).device
    request = {**request, **{k: [t.to(device) for t in request[k]] for k in ("input_ids", "instruct_ids")}}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    codes, _ = model.generate(**request, **greedy(frames))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return codes[0].cpu(), time.perf_counter() - start


def prompt(text_ids: list[int], instruct_ids: list[int] | None = None, specials: dict | None = None):
    """(input_ids, instruct_ids) for one item as generate() takes them: the text wrapped as
    `<|im_start|>assistant\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`, the voice description as
    `<|im_start|>user\\n{instruct}<|im_end|>\\n` (token ids; a real tokenizer gives them from the strings)."""
    s = specials or TEXT_SPECIALS
    start, end, nl, assistant, user = s["im_start_token_id"], s["im_end_token_id"], _NL, 77, 88
    ids = torch.tensor([[start, assistant, nl, *text_ids, end, nl, start, assistant, nl]])
    instruct = None if instruct_ids is None else torch.tensor([[start, user, nl, *instruct_ids, end, nl]])
    return ids, instruct
