"""Attention's kernel-selection step: what `fuse-attention` rewrites call.

Recognition happens in the graph (passes/fuse_attention.py); what the mask *is* can only be known at run time:
Hugging Face builds it outside the layer. So each call
1. classifies the mask (none, causal, causal + key padding, sliding window, bidirectional padding, or
   arbitrary) by reconstructing it from those few parameters and checking it is *equal* to the given one, so a
   mask is never mistaken for a kind it is not;
2. picks the implementation: the fused `slipstream::attention` op (Triton flash/decode kernels on CUDA, its
   PyTorch reference elsewhere) or the site's original computation ("reference", bit-exact with the model);
3. records (unit, site, implementation, reason) so `explain()` can show what ran and why.
"""
from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..context import CURRENT_UNIT, DECISIONS

IMPLS = ("auto", "triton", "reference")   # triton: the slipstream::attention op (Triton where Triton runs)


@dataclass(frozen=True)
class MaskInfo:
    kind: str                               # none | causal | padded | window | bidirectional | arbitrary
    key_padding: torch.Tensor | None        # [B, T] bool, True = keep; None when nothing is padded
    window: int                             # -1: no sliding window
    reason: str = ""                        # why the mask is arbitrary


_cache: list[tuple[weakref.ref, int, tuple, MaskInfo]] = []


def classify_mask(mask: torch.Tensor | None, causal: bool, s: int, t: int) -> MaskInfo:
    if mask is None:
        return MaskInfo("causal" if causal and s > 1 else "none", None, -1)
    if causal:
        return MaskInfo("arbitrary", None, -1, "an explicit mask together with is_causal")
    key = (causal, s, t, tuple(mask.shape))
    for ref, version, k, info in _cache:  # the same mask object serves every layer of a forward
        if ref() is mask and version == mask._version and k == key:
            return info
    info = _classify(mask, s, t)
    _cache.insert(0, (weakref.ref(mask), mask._version, key, info))
    del _cache[4:]
    return info


def _classify(mask: torch.Tensor, s: int, t: int) -> MaskInfo:
    if mask.dim() != 4 or mask.shape[-2:] != (s, t):
        return MaskInfo("arbitrary", None, -1, f"mask shape {tuple(mask.shape)} is not [b, 1, {s}, {t}]")
    if mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed = mask == 0
        if not (allowed | (mask <= torch.finfo(mask.dtype).min / 2)).all():
            return MaskInfo("arbitrary", None, -1, "additive mask holds values other than 0 and -inf")
    if allowed.shape[1] != 1:
        if not (allowed == allowed[:, :1]).all():
            return MaskInfo("arbitrary", None, -1, "the mask differs between heads")
        allowed = allowed[:, :1]
    a = allowed[:, 0]                                              # [b, s, t]
    key_padding = a.any(dim=1)                                     # a key nobody sees is treated as padding
    pos = torch.arange(t - s, t, device=a.device)[:, None]        # absolute query positions (bottom-right)
    j = torch.arange(t, device=a.device)[None, :]
    padded = key_padding[:, None, :]
    kp = None if bool(key_padding.all()) else key_padding
    if torch.equal(a, (j <= pos) & padded):
        return MaskInfo("causal" if kp is None else "padded", kp, -1)
    if torch.equal(a, padded.expand_as(a)):
        return MaskInfo("bidirectional", kp, -1)
    span = torch.where(a, pos - j + 1, 0).amax()
    window = int(span)
    if 0 < window < t and torch.equal(a, (j <= pos) & (j > pos - window) & padded):
        return MaskInfo("window", kp, window)
    return MaskInfo("arbitrary", None, -1, "not causal, padding or sliding-window")


@functools.cache
def _fused_available() -> bool:
    try:
        from . import attention  # noqa: F401
    except ImportError:
        return False
    return True


def choose(q: torch.Tensor, info: MaskInfo, impl: str, dropout_p: float, training: bool) -> tuple[str, str]:
    """(implementation, reason) for one call."""
    if impl == "reference":
        return "reference", "impl=reference"
    if info.kind == "arbitrary":
        return "reference", f"arbitrary mask: {info.reason}"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return "reference", f"dtype {q.dtype} is not supported by slipstream::attention"
    if not _fused_available():
        return "reference", "slipstream::attention is not available in this build"
    if impl == "auto" and q.device.type != "cuda":
        return "reference", "CPU: the original computation is the reference (impl=triton runs the fused op)"
    dropout = f", dropout {dropout_p:g} (Philox in the kernels: not the model's RNG stream)" \
        if dropout_p > 0 and training else ""
    return "triton", f"{info.kind} mask{dropout}"


def kernel_name(q: torch.Tensor, k: torch.Tensor) -> str:
    """What slipstream::attention will run for these shapes: flash, decode, or its PyTorch reference."""
    from .attention import select_attention_kernel
    kernel = select_attention_kernel(q, k)
    return "op-reference (no Triton for this device/dtype/head_dim)" if kernel == "reference" else kernel


def attention(q, k, v, k_orig, v_orig, mask, *, causal: bool, scale, dropout_p: float, training: bool,
              softcap: float, form: str, impl: str, site: str, unit: str = ""):
    """q [B,Hq,S,D]; k, v [B,Hkv,T,D] (before any repeat_kv); k_orig/v_orig as the original code used them."""
    s, t = q.shape[-2], k.shape[-2]
    info = classify_mask(mask, causal, s, t)
    choice, reason = choose(q, info, impl, dropout_p, training)
    sink = DECISIONS.get()
    if sink is not None:  # the running model's report
        label = "reference" if choice == "reference" else kernel_name(q, k)
        sink.add((CURRENT_UNIT.get() or unit, site, label, reason))
    if choice == "reference":
        return _reference(q, k_orig, v_orig, mask, causal, scale, dropout_p, training, softcap, form)
    from .attention import attention as fused_attention
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return fused_attention(q, k, v, info.key_padding, info.kind in ("causal", "padded", "window"), scale,
                           info.window, float(softcap or 0.0), float(dropout_p) if training else 0.0)


def _reference(q, k, v, mask, causal, scale, dropout_p, training, softcap, form):
    """The site's original computation, op for op (so CPU results stay bit-exact with the model)."""
    if form == "sdpa":
        gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal,
                                              scale=scale, **gqa)
    w = torch.matmul(q, k.transpose(2, 3)) * scale
    if softcap:
        w = torch.tanh(w / softcap) * softcap
    if mask is not None:
        w = w + mask
    w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
    w = F.dropout(w, p=dropout_p, training=training)
    return torch.matmul(w, v)
