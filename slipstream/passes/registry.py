"""Every pass by its pipeline name. One pass = one file = one name."""
from __future__ import annotations

from .base import Pass
from .fuse_attention import FuseAttention
from .fuse_rms_norm import FuseRmsNorm
from .fuse_rope import FuseRope
from .fuse_swiglu import FuseSwiglu

PASSES: dict[str, type[Pass]] = {p.name: p for p in (FuseRmsNorm, FuseSwiglu, FuseRope, FuseAttention)}

# Presets expand to canonical pipeline text. `train` and `default` coincide until the LoRA passes land.
PRESETS: dict[str, str] = {
    "default": "fuse-rms-norm, fuse-swiglu, fuse-rope, fuse-attention",
    "train": "fuse-rms-norm, fuse-swiglu, fuse-rope, fuse-attention",
}
