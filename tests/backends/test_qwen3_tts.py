"""Qwen3-TTS (tiny random VoiceDesign: 4 codebooks, 2 layers in talker and code predictor) through the module
backend: every site fused, forward exact, nested generate() (code predictor inside the talker's decode step)
gives identical codec frames, save/reload through slipstream's loader, mRoPE axes, LoRA fine-tuning losses."""
from __future__ import annotations

import pytest
import torch

import models
import slipstream
from qwen_tts_env import ensure_qwen_tts
from slipstream.debug.tolerance import max_rel_error, tolerance

ensure_qwen_tts()
from slipstream.frontend import qwen3_tts  # noqa: E402

FRAMES = 20
# per decoder layer: input/post-attention norms + q_norm/k_norm; one final norm per stack; q and k RoPE apart;
# the talker's mRoPE selection of cos and sin (the code predictor has plain RoPE)
EXPECTED = {"fuse-rms-norm": 2 * (2 * 4 + 1), "fuse-swiglu": 2 * 2, "fold-mrope": 2 * 2, "fuse-rope": 2 * 2 * 2,
            "fuse-attention": 2 * 2}
PLAIN = ("plain RoPE", "mRoPE axes equal")


def _greedy(frames: int = FRAMES) -> dict:
    return qwen3_tts.greedy(frames)


def _request(texts, instructs, languages):
    pairs = [qwen3_tts.prompt(t, i) for t, i in zip(texts, instructs)]
    return dict(input_ids=[p[0] for p in pairs], instruct_ids=[p[1] for p in pairs], languages=languages)


@pytest.fixture(scope="module")
def pair():
    cfg = qwen3_tts.config()
    ref, model = qwen3_tts.build(cfg), qwen3_tts.build(cfg)
    return slipstream.optimize(model), ref


def test_generate_identical_with_voice_description_and_language(pair):
    opt, ref = pair
    request = _request([[5, 6, 7, 8, 9, 10]], [[20, 21, 22, 23]], ["english"])
    got, _ = opt.generate(**request, **_greedy())
    want, _ = ref.generate(**request, **_greedy())
    assert got[0].shape == (FRAMES, 4)
    assert torch.equal(got[0], want[0])

    report = slipstream.report(opt)
    assert {name: report.fused(name) for name in EXPECTED} == EXPECTED, slipstream.explain(opt)
    assert report.refusals() == [], slipstream.explain(opt)
    units = report.units
    assert "talker.model.layers.0" in units and "talker.code_predictor.model.layers.1" in units
    # TTS prompts have equal mRoPE axes: every talker layer ran plain RoPE
    assert {(f"talker.model.layers.{i}.self_attn", *PLAIN) for i in range(2)} <= set(report.decisions("fold-mrope"))


@pytest.mark.slow
def test_generate_identical_for_a_batch_of_two_text_lengths(pair):
    opt, ref = pair
    request = _request([[5, 6, 7, 8, 9, 10, 11, 12, 13], [30, 31, 32]], [[20, 21, 22, 23], [40, 41]],
                       ["english", "chinese"])
    got, _ = opt.generate(**request, **_greedy())
    want, _ = ref.generate(**request, **_greedy())
    assert len(got) == 2
    for g, w in zip(got, want):
        assert g.shape == (FRAMES, 4)
        assert torch.equal(g, w)


def test_loaded_packages_are_findable_like_real_ones(pair):
    """The packages registered without their __init__ (qwen_tts_import.py) still answer importlib's questions."""
    import importlib.util
    for name in ("qwen_tts", "qwen_tts.core", "qwen_tts.core.models"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations


def test_forward_logits_match_fp32(pair):
    opt, ref = pair
    g = torch.Generator().manual_seed(3)
    embeds = torch.randn(2, 9, opt.config.talker_config.hidden_size, generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row, as generate() batches prompts
    tol = tolerance(torch.float32).max_rel
    with torch.no_grad():
        got = opt.talker(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        want = ref.talker(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        assert max_rel_error(got[1, 3:], want[1, 3:]) <= tol and max_rel_error(got[0], want[0]) <= tol
        pred = torch.randn(2, 4, embeds.shape[-1], generator=g)  # hidden + 3 codebook embeddings
        got = opt.talker.code_predictor.forward_finetune(inputs_embeds=pred).logits
        want = ref.talker.code_predictor.forward_finetune(inputs_embeds=pred).logits
        assert max_rel_error(got, want) <= tol


def test_mrope_axes_that_differ_stay_exact(pair):
    """Position ids whose three mRoPE axes differ (as a multimodal prompt would have): fold-mrope runs the exact
    selection and says why; with equal axes it runs plain RoPE. The output stays exact either way."""
    opt, ref = pair
    embeds = torch.randn(1, 6, opt.config.talker_config.hidden_size, generator=torch.Generator().manual_seed(4))
    pos = torch.arange(6).expand(3, 1, 6).clone()
    pos[1] += 5
    pos[2] *= 2
    report = slipstream.report(opt)
    sites = [f"talker.model.layers.{i}.self_attn" for i in range(2)]
    for position_ids, decision in ((pos, ("mRoPE selection", "mRoPE axes differ")), (None, PLAIN)):
        report.decision_log.clear()  # this call's decisions only
        with torch.no_grad():
            got = opt.talker.model(inputs_embeds=embeds, position_ids=position_ids, use_cache=False)
            want = ref.talker.model(inputs_embeds=embeds, position_ids=position_ids, use_cache=False)
        assert torch.equal(got.last_hidden_state, want.last_hidden_state)
        assert report.decisions("fold-mrope") == [(site, *decision) for site in sites]
        assert f"ran {decision[0]} at 2 site(s) ({decision[1]}): talker.model.layers.[0-1].self_attn" in \
            slipstream.explain(opt)
    with torch.no_grad():
        plain = ref.talker.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        differ = ref.talker.model(inputs_embeds=embeds, position_ids=pos, use_cache=False).last_hidden_state
    assert max_rel_error(plain, differ) > 1e-3  # the axes really change the result


def test_mrope_agrees_forward_and_backward_when_axes_differ(pair):
    """Forward and backward (grad enabled: the custom ops, not the no-grad twin) with differing axes: hidden states
    and input gradients within the fp32 tolerance."""
    opt, ref = pair
    g = torch.Generator().manual_seed(7)
    embeds = torch.randn(1, 6, opt.config.talker_config.hidden_size, generator=g)
    pos = torch.arange(6).expand(3, 1, 6).clone()
    pos[2] += 3
    tol = tolerance(torch.float32).max_rel
    outs, grads = [], []
    for model in (opt, ref):
        x = embeds.clone().requires_grad_()
        out = model.talker.model(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(8))).sum().backward()
        outs.append(out.detach()), grads.append(x.grad)
    assert max_rel_error(outs[0], outs[1]) <= tol and max_rel_error(grads[0], grads[1]) <= tol


def test_save_pretrained_and_reload_through_loader(pair, tmp_path):
    opt, _ = pair
    opt.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = qwen3_tts.load(tmp_path)
    assert type(reloaded) is type(opt) and not reloaded.training
    state, want = reloaded.state_dict(), opt.state_dict()
    assert list(state) == list(want) and all(torch.equal(state[k], want[k]) for k in want)
    request = _request([[5, 6, 7, 8]], [[20, 21]], ["english"])
    got, _ = reloaded.generate(**request, **_greedy(8))
    expected, _ = opt.generate(**request, **_greedy(8))
    assert torch.equal(got[0], expected[0])


def _lora_tts():
    from peft import LoraConfig, inject_adapter_in_model
    model = qwen3_tts.build(qwen3_tts.config())
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(5)
    inject_adapter_in_model(config, model.talker)  # talker and its code predictor, in place
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def _finetune_loss(model, embeds, labels, codec_ids):
    """The fine-tuning objective: the talker's codec loss plus the code predictor's loss on the talker's hidden
    states (forward_sub_talker_finetune -> code_predictor.forward_finetune)."""
    out = model.talker(inputs_embeds=embeds, labels=labels, use_cache=False, output_hidden_states=True)
    hidden = out.hidden_states[0][-1]                        # last layer's output per position
    _, sub_loss = model.talker.forward_sub_talker_finetune(codec_ids, hidden.reshape(-1, hidden.shape[-1]))
    return out.loss + sub_loss


def test_lora_finetune_steps_match_unoptimized():
    ref, opt = _lora_tts(), slipstream.optimize(_lora_tts())
    cfg = ref.config.talker_config
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(2, 7, cfg.hidden_size, generator=g),
                torch.randint(0, 64, (2, 7), generator=g),
                torch.randint(0, 64, (14, cfg.num_code_groups), generator=g)) for _ in range(3)]
    models.assert_trains_alike(ref, opt, lambda model, step: _finetune_loss(model, *batches[step]),
                               steps=len(batches))
    report = slipstream.report(opt)
    # 7 LoRA linears per layer, 2 layers, in each of the two decoders
    assert report.fused("fuse-lora-linear") == 2 * 2 * 7, slipstream.explain(opt)
    assert report.fused("fuse-rms-norm") == EXPECTED["fuse-rms-norm"], slipstream.explain(opt)


def test_codec_decoder_transformer_fused_and_exact():
    """The 12 Hz codec decoder (codes -> waveform): its transformer's norms, SwiGLUs, RoPEs and sliding-window
    attentions are fused by the same passes, and the waveform stays exact."""
    cfg = qwen3_tts.codec_config()
    ref, model = qwen3_tts.build_codec(cfg), qwen3_tts.build_codec(cfg)
    codes = torch.randint(0, cfg.codebook_size, (2, cfg.num_quantizers, 20), generator=torch.Generator().manual_seed(3))
    opt = slipstream.optimize(model, warmup=False)
    got, want = opt(codes), ref(codes)
    assert got.shape == (2, 1, 20 * 8)
    assert max_rel_error(got, want) <= tolerance(torch.float32).max_rel
    report = slipstream.report(opt)
    layers = cfg.num_hidden_layers
    expected = {"fuse-rms-norm": 2 * layers + 1, "fuse-swiglu": layers, "fuse-rope": 2 * layers,
                "fuse-attention": layers}
    assert {name: report.fused(name) for name in expected} == expected, slipstream.explain(opt)
    assert report.refusals() == [], slipstream.explain(opt)
