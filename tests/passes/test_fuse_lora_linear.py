"""fuse-lora-linear: fires on peft LoRA linears (dense and quantized base, dropout, several adapters), refuses
DoRA / lora_bias / a foreign adapter input with reasons, agrees with the unoptimized peft model."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import models
import slipstream
from helpers import assert_agrees, optimize_with
from slipstream.debug.tolerance import max_rel_error, tolerance

import peft

PASS = "fuse-lora-linear"
LINEARS_PER_LAYER = 7  # q k v o gate up down


def _random_lora_b(model) -> None:
    """peft starts B at zero; a random B makes the adapters' part of the output visible."""
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)


def peft_llama(dtype=torch.float32, adapters=("default",), **lora):
    base = models.build("llama", dtype=dtype)
    config = dict(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0) | lora
    model = peft.get_peft_model(base, peft.LoraConfig(**config), adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, peft.LoraConfig(**config))
    torch.manual_seed(3)
    _random_lora_b(model)
    if len(adapters) > 1:
        model.base_model.set_adapter(list(adapters))
    return model


def _grads_agree(opt, ref, ids, dtype):
    out, want = opt(ids).logits, ref(ids).logits
    tol = tolerance(dtype).max_rel
    assert max_rel_error(out, want) <= tol
    g = torch.randn(want.shape).to(dtype)
    (out * g).sum().backward()
    (want * g).sum().backward()
    reference = dict(ref.named_parameters())
    trained = [(n, p) for n, p in opt.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for _, p in trained)
    for name, p in trained:
        assert max_rel_error(p.grad, reference[name].grad) <= tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fires_on_every_lora_linear_and_agrees(dtype):
    ref = peft_llama(dtype)
    opt = slipstream.optimize(copy.deepcopy(ref), pipeline=PASS)
    report = slipstream.report(opt)
    assert report.fused(PASS) == LINEARS_PER_LAYER * ref.config.num_hidden_layers
    assert {rule for rule, _ in report.passes[PASS].matches} == {"dense-base"}
    assert report.refusals(PASS) == []
    _grads_agree(opt, ref, models.token_batch(), dtype)


def test_dropout_in_training_keeps_peft_rng():
    ref = peft_llama(lora_dropout=0.3).train()
    opt = slipstream.optimize(copy.deepcopy(ref), pipeline=PASS).train()
    ids = models.token_batch()
    torch.manual_seed(11)
    out = opt(ids).logits
    torch.manual_seed(11)
    want = ref(ids).logits
    assert slipstream.report(opt).fused(PASS) == LINEARS_PER_LAYER * 2
    assert max_rel_error(out, want) <= tolerance(torch.float32).max_rel
    torch.manual_seed(12)
    assert max_rel_error(opt(ids).logits, want) > 1e-3  # a different seed drops other units: dropout is live


def test_two_active_adapters_fuse_into_one_op():
    ref = peft_llama(adapters=("first", "second"))
    opt = slipstream.optimize(copy.deepcopy(ref), pipeline=PASS)
    record = slipstream.report(opt).passes[PASS]
    assert record.fused == LINEARS_PER_LAYER * 2
    assert {rule for rule, _ in record.matches} == {"dense-base"}
    _grads_agree(opt, ref, models.token_batch(), torch.float32)


def test_quantized_base_fuses_and_agrees_with_dequantized_model():
    ref = peft_llama()
    opt = slipstream.optimize(copy.deepcopy(ref), pipeline=f"quantize-weights{{format=int8}}, {PASS}")
    report = slipstream.report(opt)
    assert report.fused(PASS) == LINEARS_PER_LAYER * 2
    assert {rule for rule, _ in report.passes[PASS].matches} == {"quantized-base"}
    for path, module in opt.named_modules():
        if isinstance(module, slipstream.modules.QuantLinear):
            ref.get_submodule(path).weight.data = module.dequantize(torch.float32)
    _grads_agree(opt, ref, models.token_batch(), torch.float32)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@pytest.mark.parametrize("variant,reason", [(dict(use_dora=True), "DoRA"), (dict(lora_bias=True), "bias")])
def test_refuses_dora_and_lora_bias(variant, reason):
    # A two-linear module, not a Llama: peft's DoRA forward breaks dynamo's graph at every adapted linear, and the
    # refusal is per linear.
    torch.manual_seed(0)
    model = peft.get_peft_model(Mlp(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"], **variant))
    _random_lora_b(model)
    x = torch.randn(3, 16)
    opt, ref, report = optimize_with(model, PASS, x)
    assert report.fused(PASS) == 0
    refusals = report.refusals(PASS)
    assert refusals and all(reason in r for _, _, r in refusals), refusals
    assert_agrees(opt, ref, x)


class ForeignAdapterInput(nn.Module):
    """base(x) + B(A(z)) * s where z is not x: not a LoRA linear, must be left alone with a reason."""

    def __init__(self):
        super().__init__()
        self.base, self.a, self.b = nn.Linear(16, 24), nn.Linear(16, 4, bias=False), nn.Linear(4, 24, bias=False)

    def forward(self, x, z):
        return self.base(x) + self.b(self.a(z)) * 0.5


def test_refuses_an_adapter_reading_another_tensor():
    x, z = torch.randn(3, 16), torch.randn(3, 16)
    opt, ref, report = optimize_with(ForeignAdapterInput(), PASS, x, z)
    assert report.fused(PASS) == 0
    [(_, _, reason)] = report.refusals(PASS)
    assert "not the base layer's input" in reason
    assert_agrees(opt, ref, x, z)


def test_bitsandbytes_4bit_and_8bit_bases_are_read_and_fused():
    """A peft model on bitsandbytes layers: quantize-weights reads the bnb bytes as they are (no re-quantization),
    fuse-lora-linear folds peft's bnb wrappers (clone, output cast) into lora_linear, and the outputs equal bnb's."""
    import bitsandbytes as bnb
    model = models.build("llama")
    torch.manual_seed(4)
    for layer in model.model.layers:  # bnb layers built from the dense weights, as from_pretrained would
        for parent, name, make in ((layer.self_attn, "q_proj", "4bit"), (layer.mlp, "down_proj", "8bit")):
            dense = getattr(parent, name)
            if make == "4bit":
                q = bnb.nn.Linear4bit(dense.in_features, dense.out_features, bias=False, quant_type="nf4",
                                      compute_dtype=torch.float32)
                q.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
            else:
                q = bnb.nn.Linear8bitLt(dense.in_features, dense.out_features, bias=False, has_fp16_weights=False)
                q.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
            setattr(parent, name, q.to("cpu"))
    ref = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["q_proj", "down_proj"], lora_dropout=0.0))
    _random_lora_b(ref)
    ids = models.token_batch()
    with torch.no_grad():
        want = ref(ids).logits
    opt = slipstream.optimize(copy.deepcopy(ref), pipeline=f"quantize-weights{{include=none}}, {PASS}")
    report = slipstream.report(opt)
    assert report.fused("quantize-weights") == 4  # the bnb layers, read as they are (include=none selects no others)
    assert {p for r, p in report.passes["quantize-weights"].matches if r == "bitsandbytes"} == {
        f"base_model.model.model.layers.{i}.{m}.base_layer" for i in (0, 1) for m in ("self_attn.q_proj",
                                                                                      "mlp.down_proj")}
    assert report.fused(PASS) == 4 and report.refusals(PASS) == []
    bnb_bases = [m for p, m in opt.named_modules() if p.endswith(("q_proj.base_layer", "down_proj.base_layer"))]
    assert {m.fmt for m in bnb_bases} == {"nf4", "int8"}
    with torch.no_grad():
        assert max_rel_error(opt(ids).logits, want) <= 1e-3  # bnb's own int8 matmul rounds x to int8 too
