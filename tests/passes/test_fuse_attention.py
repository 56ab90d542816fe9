"""fuse-attention: refuses what it must, agrees with eager, runs the fused kernels in models; the run-time mask
classification tells causal / padded / window masks from arbitrary ones, exactly. That it fires on every family
(sdpa and eager forms), exact on CPU through the reference impl, is the fp32 sweep of tests/backends/test_module.py
(one capture per family serves every pass's count), as is generate() on a left-padded batch."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
import slipstream
from helpers import assert_agrees, optimize_with
from slipstream.debug.tolerance import max_rel_error, tolerance
from slipstream.kernels.attention_dispatch import classify_mask


def test_refuses_when_attention_weights_are_returned():
    model = models.build("gemma2")  # eager attention: the weights exist in the graph
    reference = copy.deepcopy(model)
    opt = slipstream.optimize(model, pipeline="fuse-attention")
    ids = models.token_batch()
    out = opt(ids, output_attentions=True)
    want = reference(ids, output_attentions=True)
    reasons = {reason for _, _, reason in slipstream.report(opt).refusals("fuse-attention")}
    assert any("attention weights are used outside" in r for r in reasons), reasons
    for a, b in zip(out.attentions, want.attentions):
        assert torch.equal(a, b)
    assert torch.equal(out.logits, want.logits)


class MaskedSdpa(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_arbitrary_mask_runs_the_reference_with_the_reason():
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    mask = torch.rand(1, 1, 5, 5) > 0.3
    opt, ref, report = optimize_with(MaskedSdpa(), "fuse-attention{impl=triton}", q, k, v, mask)
    assert report.fused("fuse-attention") == 1
    [(path, impl, reason)] = report.decisions()
    assert impl == "reference" and reason.startswith("arbitrary mask")
    assert_agrees(opt, ref, q, k, v, mask)


def _causal(s, t):
    return torch.arange(t)[None, :] <= torch.arange(t - s, t)[:, None]


def test_mask_classification_is_exact():
    s = t = 6
    causal = _causal(s, t)[None, None].expand(2, 1, s, t)
    assert classify_mask(None, True, s, t).kind == "causal"
    assert classify_mask(None, False, 1, t).kind == "none"
    assert classify_mask(causal.clone(), False, s, t).kind == "causal"
    padded = causal.clone()
    padded[0, :, :, :2] = False  # left padding on row 0
    info = classify_mask(padded, False, s, t)
    assert info.kind == "padded" and info.key_padding.tolist()[0] == [False, False, True, True, True, True]
    window = causal & (torch.arange(t)[None, :] > torch.arange(t)[:, None] - 3)
    info = classify_mask(window.clone(), False, s, t)
    assert (info.kind, info.window) == ("window", 3)
    additive = torch.zeros(2, 1, s, t).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert classify_mask(additive, False, s, t).kind == "causal"
    assert classify_mask(torch.ones(2, 1, s, t, dtype=torch.bool), False, s, t).kind == "bidirectional"
    decode = _causal(1, t)[None, None].expand(2, 1, 1, t).clone()
    assert classify_mask(decode, False, 1, t).kind == "causal"
    odd = causal.clone()
    odd[1, 0, 4, 1] = False  # one hole: not expressible as causal + padding + window
    assert classify_mask(odd, False, s, t).kind == "arbitrary"
    scaled = additive.clone()
    scaled[0, 0, 0, 0] = 0.5
    assert "values other than 0 and -inf" in classify_mask(scaled, False, s, t).reason


def _packed_mask(segments: list[list[int]]) -> torch.Tensor:
    """Bool [B, 1, S, S] block-diagonal causal mask of per-row sequence lengths."""
    rows = []
    for lengths in segments:
        seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        rows.append((seg[:, None] == seg[None, :]) & _causal(len(seg), len(seg)))
    return torch.stack(rows)[:, None]


def test_packed_sequences_are_classified_with_their_bounds():
    info = classify_mask(_packed_mask([[3, 1, 4], [8]]), False, 8, 8)
    assert info.kind == "packed" and info.cu_seqlens.tolist() == [0, 3, 4, 8, 16] and info.max_seqlen == 8
    bidirectional_blocks = _packed_mask([[3, 5]]) | _packed_mask([[3, 5]]).transpose(-1, -2)
    assert classify_mask(bidirectional_blocks, False, 8, 8).kind == "arbitrary"
    holed = _packed_mask([[3, 5]])
    holed[0, 0, 6, 4] = False  # a key missing inside the second sequence
    assert classify_mask(holed, False, 8, 8).kind == "arbitrary"


@pytest.mark.parametrize("impl", ["auto", "triton"])
def test_packed_sequences_run_the_varlen_kernel(impl):
    """position_ids that restart make Hugging Face build a block-diagonal causal mask: impl=triton runs the varlen
    kernel (interpreter) and matches the model, forward and backward; impl=auto on CPU runs the original."""
    from slipstream.kernels import force_triton_on_cpu

    model = models.build("qwen3")
    reference = copy.deepcopy(model)
    opt = slipstream.optimize(model, pipeline=f"fuse-attention{{impl={impl}}}")
    ids = models.token_batch(batch=2, seq=12)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4]])
    with force_triton_on_cpu():
        out = opt(input_ids=ids, position_ids=positions, labels=ids, use_cache=False)  # packing: no KV cache
        out.loss.backward()
    want = reference(input_ids=ids, position_ids=positions, labels=ids, use_cache=False)
    want.loss.backward()
    tol = tolerance(torch.float32).max_rel
    assert max_rel_error(out.logits, want.logits) <= tol
    for (name, p), q in zip(opt.named_parameters(), reference.parameters()):
        assert max_rel_error(p.grad, q.grad) <= tol, name
    ran = {(impl, reason) for _, impl, reason in slipstream.report(opt).decisions()}
    expected = ("varlen", "packed mask") if impl == "triton" else \
        ("reference", "CPU: the original computation is the reference (impl=triton runs the fused op)")
    assert expected in ran, ran


def test_mask_classification_is_cached_per_live_mask_object():
    mask = _causal(4, 4)[None, None].expand(1, 1, 4, 4).clone()
    first = classify_mask(mask, False, 4, 4)
    assert classify_mask(mask, False, 4, 4) is first
    mask[0, 0, 3, 0] = False  # in-place change bumps the version: classified again
    assert classify_mask(mask, False, 4, 4) is not first


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3"])  # qwen3 and phi3 attend as llama does
def test_fused_kernels_agree_in_a_model(family):
    """impl=triton with the Triton kernels (interpreter): causal, GQA, soft-cap, sliding window, left padding."""
    from slipstream.kernels import force_triton_on_cpu

    model = models.build(family, sliding_window=4) if family.startswith("gemma") else models.build(family)
    reference = copy.deepcopy(model)
    opt = slipstream.optimize(model, pipeline="fuse-attention{impl=triton}")
    ids = models.token_batch(seq=9)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    # padded queries see no key (eager attends uniformly there, the kernels output 0): keep their logits, which
    # predict the next label, out of the loss
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    opt.train(), reference.train()
    with force_triton_on_cpu():
        out = opt(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    want.loss.backward()
    tol = tolerance(torch.float32).max_rel
    assert max_rel_error(out.logits[mask.bool()], want.logits[mask.bool()]) <= tol
    for (name, p), q in zip(opt.named_parameters(), reference.parameters()):
        assert max_rel_error(p.grad, q.grad) <= tol, name
    kinds = {reason for _, impl, reason in slipstream.report(opt).decisions() if impl in ("flash", "decode")}
    assert "padded mask" in kinds or "window mask" in kinds, kinds


def test_fused_decode_in_generate():
    """Prefill and KV-cache decode through the fused kernels (interpreter) give the reference's tokens and logits."""
    from slipstream.kernels import force_triton_on_cpu

    model = models.build("qwen3")
    reference = copy.deepcopy(model)
    opt = slipstream.optimize(model, pipeline="fuse-attention{impl=triton}", warmup=False)
    ids = models.token_batch(batch=1, seq=125)  # decode steps reach T >= 128 keys: the split-K decode kernel
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    with force_triton_on_cpu():
        got = opt.generate(ids, **greedy)
    want = reference.generate(ids, **greedy)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        assert max_rel_error(a, b) <= tolerance(torch.float32).max_rel
    assert {impl for _, impl, _ in slipstream.report(opt).decisions()} == {"flash", "decode"}  # prefill, decode


def test_attention_dropout_runs_in_the_fused_kernels():
    """Training with attention dropout takes the flash kernel (Philox dropout, interpreter): the decision says so,
    dropout is live (train != eval), a seed reproduces the step exactly, and eval matches the original model."""
    from slipstream.kernels import force_triton_on_cpu

    model = models.build("llama", attention_dropout=0.2)
    reference = copy.deepcopy(model)
    opt = slipstream.optimize(model, pipeline="fuse-attention{impl=triton}")
    ids = models.token_batch(seq=9)

    def step():
        torch.manual_seed(3)
        opt.zero_grad()
        out = opt(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.logits.detach(), [p.grad.clone() for p in opt.parameters()]

    opt.train()
    with force_triton_on_cpu():
        (a, grads_a), (b, grads_b) = step(), step()
        opt.eval()
        evaluated = opt(input_ids=ids).logits
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    assert all(g.isfinite().all() for g in grads_a)
    assert not torch.allclose(a, evaluated, atol=1e-3)
    assert max_rel_error(evaluated, reference.eval()(input_ids=ids).logits) <= tolerance(torch.float32).max_rel
    reasons = {reason for _, impl, reason in slipstream.report(opt).decisions() if impl == "flash"}
    assert any("dropout 0.2" in r for r in reasons), reasons
