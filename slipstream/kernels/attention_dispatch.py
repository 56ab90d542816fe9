"""Attention's kernel-selection step: what `fuse-attention` rewrites call.

Recognition happens in the graph (passes/fuse_attention.py); what the mask *is* can only be known at run time:
Hugging Face builds it outside the layer. So each call
1. classifies the mask (none, causal, causal + key padding, sliding window, bidirectional padding, packed
   sequences (block-diagonal causal, what Hugging Face builds from position_ids that restart), or arbitrary) by
   reconstructing it from those few parameters and checking it is *equal* to the given one, so a mask is never
   mistaken for a kind it is not;
2. picks the implementation: the fused `slipstream::attention` op (Triton flash/decode kernels on CUDA, its
   PyTorch reference elsewhere), `slipstream::attention_varlen` for packed sequences, or the site's original
   computation ("reference", bit-exact with the model);
3. records (unit, site, implementation, reason) so `explain()` can show what ran and why.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..context import record_decision
from .tensor_memo import TensorMemo

IMPLS = ("auto", "triton", "reference")   # triton: the slipstream::attention op (Triton where Triton runs)


@dataclass(frozen=True)
class MaskInfo:
    kind: str                               # none | causal | padded | window | bidirectional | packed | arbitrary
    key_padding: torch.Tensor | None        # [B, T] bool, True = keep; None when nothing is padded
    window: int                             # -1: no sliding window
    reason: str = ""                        # why the mask is arbitrary
    cu_seqlens: torch.Tensor | None = None  # packed: int32 [n + 1] sequence bounds over the B * S flattened rows
    max_seqlen: int = 0                     # packed: the longest sequence


_masks = TensorMemo()  # the same mask object serves every layer of a forward


def classify_mask(mask: torch.Tensor | None, causal: bool, s: int, t: int) -> MaskInfo:
    if mask is None:
        return MaskInfo("causal" if causal and s > 1 else "none", None, -1)
    if causal:
        return MaskInfo("arbitrary", None, -1, "an explicit mask together with is_causal")
    return _masks.get(mask, (causal, s, t, tuple(mask.shape)), lambda: _classify(mask, s, t))


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
    packed = _packed(a)
    if packed is not None:
        return packed
    return MaskInfo("arbitrary", None, -1, "not causal, padding, sliding-window or packed sequences")


def _packed(a: torch.Tensor) -> MaskInfo | None:
    """Packed sequences: every query sees exactly the keys of its own sequence up to itself. A sequence starts
    where a row's first visible key is the row itself; the mask rebuilt from those starts must equal `a`."""
    b, s, t = a.shape
    i = torch.arange(s, device=a.device)
    if s != t or not a[:, i, i].all():
        return None
    starts = a.int().argmax(-1) == i                               # [b, s]; row 0 always starts one
    seg = starts.cumsum(-1)
    if not torch.equal(a, (seg[:, :, None] == seg[:, None, :]) & (i[None, :] <= i[:, None])):
        return None
    bounds = (starts.reshape(-1).nonzero()[:, 0]).tolist() + [b * s]  # over the flattened [b * s] rows
    cu = torch.tensor(bounds, dtype=torch.int32, device=a.device)
    return MaskInfo("packed", None, -1, cu_seqlens=cu, max_seqlen=int((cu[1:] - cu[:-1]).max()))


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
    if info.kind == "packed" and dropout_p > 0 and training:
        return "reference", "attention dropout over packed sequences (the varlen kernel has none)"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return "reference", f"dtype {q.dtype} is not supported by slipstream::attention"
    if not _fused_available():
        return "reference", "slipstream::attention is not available in this build"
    if impl == "auto" and q.device.type != "cuda":
        return "reference", "CPU: the original computation is the reference (impl=triton runs the fused op)"
    dropout = f", dropout {dropout_p:g} (Philox in the kernels: not the model's RNG stream)" \
        if dropout_p > 0 and training else ""
    return "triton", f"{info.kind} mask{dropout}"


def kernel_name(q: torch.Tensor, k: torch.Tensor, packed: bool = False) -> str:
    """What slipstream::attention will run for these shapes: flash, decode, or its PyTorch reference."""
    from .attention import select_attention_kernel
    kernel = select_attention_kernel(q, k)
    if kernel != "reference" and packed:
        kernel = "varlen"
    return "op-reference (no Triton for this device/dtype/head_dim)" if kernel == "reference" else kernel


def attention(q, k, v, k_orig, v_orig, mask, *, causal: bool, scale, dropout_p: float, training: bool,
              softcap: float, form: str, impl: str, site: str, unit: str = ""):
    """q [B,Hq,S,D]; k, v [B,Hkv,T,D] (before any repeat_kv); k_orig/v_orig as the original code used them."""
    s, t = q.shape[-2], k.shape[-2]
    info = classify_mask(mask, causal, s, t)
    choice, reason = choose(q, info, impl, dropout_p, training)
    record_decision("fuse-attention", unit, site,
                    lambda: "reference" if choice == "reference" else kernel_name(q, k, info.kind == "packed"), reason)
    if choice == "reference":
        return _reference(q, k_orig, v_orig, mask, causal, scale, dropout_p, training, softcap, form)
    from .attention import attention as fused_attention
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if info.kind == "packed":
        return _varlen(q, k, v, info, scale, float(softcap or 0.0))
    return fused_attention(q, k, v, info.key_padding, info.kind in ("causal", "padded", "window"), scale,
                           info.window, float(softcap or 0.0), float(dropout_p) if training else 0.0)


def _varlen(q, k, v, info: MaskInfo, scale: float, softcap: float) -> torch.Tensor:
    """Packed sequences through slipstream::attention_varlen: [B, H, S, D] -> [B * S, H, D] rows and back."""
    from .attention_varlen import attention_varlen

    b, hq, s, d = q.shape

    def rows(x):
        return x.transpose(1, 2).reshape(b * s, x.shape[1], d)
    out = attention_varlen(rows(q), rows(k), rows(v), info.cu_seqlens, info.cu_seqlens, info.max_seqlen,
                           info.max_seqlen, causal=True, scale=scale, softcap=softcap)
    return out.reshape(b, s, hq, d).transpose(1, 2)


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
