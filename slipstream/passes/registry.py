"""Every pass by its pipeline name. One pass = one file = one name."""
from __future__ import annotations

from .base import Pass
from .fold_mrope import FoldMrope
from .fuse_attention import FuseAttention
from .fuse_lora_linear import FuseLoraLinear
from .fuse_rms_norm import FuseRmsNorm
from .fuse_rope import FuseRope
from .fuse_swiglu import FuseSwiglu
from .quantize_weights import QuantizeWeights

PASSES: dict[str, type[Pass]] = {p.name: p for p in (QuantizeWeights, FuseLoraLinear, FuseRmsNorm, FuseSwiglu,
                                                      FoldMrope, FuseRope, FuseAttention)}

_FUSE = "fuse-lora-linear, fuse-rms-norm, fuse-swiglu, fold-mrope, fuse-rope, fuse-attention"
# Presets expand to canonical pipeline text. fuse-lora-linear finds nothing in a model without peft adapters, nor
# fold-mrope in one without multimodal RoPE.
PRESETS: dict[str, str] = {
    "default": _FUSE,
    "train": _FUSE,
    "train-qlora": f"quantize-weights{{format=nf4}}, {_FUSE}",   # QLoRA: NF4 base, adapters fused onto it
}
