"""The module backend on every spine family: fused counts, forward/backward parity, generate(), peft training.
The fp32 sweep is also fuse-attention's (and the other passes') "fires on every family" test."""
from __future__ import annotations

import copy
import re

import pytest
import torch

import models
import slipstream
from slipstream.debug.tolerance import max_rel_error, tolerance


def _optimized_pair(family: str, dtype=torch.float32):
    model = models.build(family, dtype=dtype)
    reference = copy.deepcopy(model)
    return slipstream.optimize(model), reference


# generate() on the families whose decode step differs in kind: Llama's plain one, Qwen3's and OLMo2's q/k norms,
# Gemma 2's sliding-window cache layers, soft-caps and (1 + w) norms, Phi-3's fused projections, GLM's interleaved
# partial rotary. The others decode as one of these does (Gemma 3: Gemma 2's layers with Qwen3's q/k norms), and each
# generate() costs four or more captures (prefill; decode static, then symbolic in the cache length; per cache type).
GENERATE_FAMILIES = {"llama", "qwen3", "olmo2", "gemma2", "phi3", "glm"}


@pytest.mark.parametrize("family", models.SPINE_FAMILIES + models.UNNAMED_FAMILIES)
def test_family_fused_and_exact_fp32(family):
    opt, ref = _optimized_pair(family)
    report = slipstream.report(opt)
    expected = models.expected_sites(ref)
    assert {name: report.fused(name) for name in expected} == expected, slipstream.explain(opt)
    assert report.refusals() == [], slipstream.explain(opt)

    opt.train(), ref.train()
    ids = models.token_batch(seq=13)
    out, want = opt(input_ids=ids, labels=ids), ref(input_ids=ids, labels=ids)
    out.loss.backward(), want.loss.backward()
    tol = tolerance(torch.float32)
    assert max_rel_error(out.logits, want.logits) <= tol.max_rel
    for (name, p), q in zip(opt.named_parameters(), ref.parameters()):
        assert max_rel_error(p.grad, q.grad) <= tol.max_rel, name
    assert {impl for _, impl, _ in report.decisions()} == {"reference"}  # CPU + impl=auto: the original computation
    assert "> ran reference at" in slipstream.explain(opt)

    generates = family in GENERATE_FAMILIES
    if generates:
        opt.eval(), ref.eval()
        prompt = ids[:, :5]
        greedy = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)  # min: a random model may hit EOS early
        got = opt.generate(prompt, **greedy)
        assert torch.equal(got, ref.generate(prompt, **greedy))
        assert got.shape[1] == 5 + 16
        # the prefill and decode variants captured by generate() fuse the same sites, counted once each
        assert {name: report.fused(name) for name in expected} == expected, slipstream.explain(opt)
        assert report.refusals() == [], slipstream.explain(opt)
    # and each layer graph on its own, static (the warm-up's) or symbolic in the sizes that changed since: a site
    # one variant missed cannot hide behind another's count
    per_layer = {**{name: n // ref.config.num_hidden_layers for name, n in expected.items()},
                 "fuse-rms-norm": models.rms_norms(ref.model.layers[0])}
    layer_graphs = [g for g in report.graph_records if re.fullmatch(r"model\.layers\.\d+", g.unit)]
    assert len(layer_graphs) >= (4 if generates else 2)  # warm-up, training (, prefill, decode)
    for graph in layer_graphs:
        assert {name: sum(graph.matches.get(name, {}).values()) for name in per_layer} == per_layer, graph.unit


# bf16: the families whose numerics differ in kind (Gemma's (1 + w) norms, embedding scale and soft-caps; Phi-3's
# fused projections); the rest compute as Llama does.
@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "phi3"])
def test_family_bf16_within_tolerance(family):
    opt, ref = _optimized_pair(family, torch.bfloat16)
    ids = models.token_batch(seq=10)
    out, want = opt(input_ids=ids, labels=ids), ref(input_ids=ids, labels=ids)
    out.loss.backward(), want.loss.backward()
    tol = tolerance(torch.bfloat16)
    assert torch.isfinite(out.logits).all()
    assert max_rel_error(out.logits, want.logits) <= tol.max_rel
    for (name, p), q in zip(opt.named_parameters(), ref.parameters()):
        assert torch.isfinite(p.grad).all(), name
        assert max_rel_error(p.grad, q.grad) <= tol.max_rel, name


def test_drop_in_module_keeps_identity_state_dict_and_save_pretrained(tmp_path):
    model = models.build("qwen3")
    keys, params = list(model.state_dict()), [id(p) for p in model.parameters()]
    opt = slipstream.optimize(model)
    assert opt is model
    assert list(opt.state_dict()) == keys
    assert [id(p) for p in opt.parameters()] == params

    opt.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = models.token_batch()
    torch.testing.assert_close(reloaded(ids).logits, opt(ids).logits, rtol=0, atol=0)


def test_no_recompilation_per_sequence_length():
    opt = slipstream.optimize(models.build("llama"))
    report = slipstream.report(opt)
    opt(models.token_batch(seq=6))
    graphs = report.graphs
    for seq in (7, 9, 17, 30):
        opt(models.token_batch(seq=seq))
    assert report.graphs == graphs


def test_captures_start_static_and_each_model_keeps_its_own_record_of_changed_sizes():
    first = slipstream.optimize(models.build("llama", num_hidden_layers=1))
    first(models.token_batch(seq=5))  # the warm-up's sequence length changed: recaptured with it symbolic
    assert " : f32[2, s0, 64]" in slipstream.diff(first, times=False)
    second = slipstream.optimize(models.build("llama", num_hidden_layers=1))  # same layer code, a new model
    text = slipstream.diff(second, times=False)
    assert " : f32[2, 8, 64]" in text and not re.search(r"\bs0\b", text)  # static: first's record is not shared


def test_train_eval_mode_honoured():
    model = models.build("llama", attention_dropout=0.5)
    opt = slipstream.optimize(model)
    ids = models.token_batch()
    opt.eval()
    assert torch.equal(opt(ids).logits, opt(ids).logits)      # eval: dropout off, deterministic
    opt.train()
    torch.manual_seed(0)
    a = opt(ids).logits
    torch.manual_seed(1)
    assert not torch.equal(a, opt(ids).logits)                  # train: dropout on


def test_restore_and_double_optimize():
    model = slipstream.optimize(models.build("llama"))
    with pytest.raises(RuntimeError, match="already captured"):
        slipstream.optimize(model)
    slipstream.restore(model)
    assert "forward" not in model.model.layers[0].__dict__
    with pytest.raises(ValueError, match="not optimized"):
        slipstream.explain(model)


# LoRA on every linear: plain projections (llama), biased ones (qwen2), Gemma's layout, Phi-3's fused qkv/gate_up.
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "phi3"])
def test_peft_lora_trains_like_unoptimized(family):
    from peft import LoraConfig, get_peft_model

    def peft_model():
        base = models.build(family)
        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False, target_modules="all-linear")
        torch.manual_seed(3)
        return get_peft_model(base, config)

    ref, opt = peft_model(), slipstream.optimize(peft_model())
    assert slipstream.report(opt).fused("fuse-rms-norm") == models.expected_sites(ref)["fuse-rms-norm"]
    trainable = [n for n, p in opt.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    def loss_at(model, step):
        ids = models.token_batch(seed=10 + step)
        return model(input_ids=ids, labels=ids).loss
    models.assert_trains_alike(ref, opt, loss_at)


def test_gradient_checkpointing():
    model = models.build("llama")
    ref = copy.deepcopy(model)
    for m in (model, ref):
        m.gradient_checkpointing_enable()
        m.train()
    opt = slipstream.optimize(model)
    ids = models.token_batch()
    opt(input_ids=ids, labels=ids).loss.backward()
    ref(input_ids=ids, labels=ids).loss.backward()
    for p, q in zip(opt.parameters(), ref.parameters()):
        assert max_rel_error(p.grad, q.grad) <= tolerance(torch.float32).max_rel


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_generate_left_padded_batch(family):
    """A padded batch takes the attention-mask variant of the graphs; tokens stay identical."""
    opt, ref = _optimized_pair(family)
    ids = models.token_batch(batch=2, seq=7)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding on the first row
    greedy = dict(attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(opt.generate(ids, **greedy), ref.generate(ids, **greedy))


def test_sampling_generate_matches_with_same_seed():
    opt, ref = _optimized_pair("qwen2")
    ids = models.token_batch(batch=1, seq=5)
    outs = []
    for model in (opt, ref):
        torch.manual_seed(7)
        outs.append(model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=True, top_k=20))
    assert torch.equal(*outs)


def test_ddp_wrapped_training_matches(tmp_path):
    """The optimized model trains inside DistributedDataParallel (one CPU process, gloo) with eager's grads."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        opt, ref = _optimized_pair("llama")
        opt.train(), ref.train()
        ddp = DDP(opt)
        ids = models.token_batch()
        ddp(input_ids=ids, labels=ids).loss.backward()
        ref(input_ids=ids, labels=ids).loss.backward()
        for p, q in zip(opt.parameters(), ref.parameters()):
            assert max_rel_error(p.grad, q.grad) <= tolerance(torch.float32).max_rel
        assert slipstream.report(ddp).fused("fuse-rms-norm") == 5  # explain() sees through the wrapper
    finally:
        dist.destroy_process_group()


def test_hf_trainer_steps_match(tmp_path):
    from transformers import Trainer, TrainingArguments

    ids = models.token_batch(batch=8, seq=12, seed=5)
    data = [{"input_ids": row, "labels": row} for row in ids]
    losses = []
    for optimize in (True, False):
        model = models.build("qwen3")
        if optimize:
            model = slipstream.optimize(model)
        args = TrainingArguments(output_dir=str(tmp_path / str(optimize)), per_device_train_batch_size=4,
                                 max_steps=2, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                                 save_strategy="no", learning_rate=1e-3)
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        losses.append([log["loss"] for log in trainer.state.log_history if "loss" in log])
    assert len(losses[0]) == 2
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
