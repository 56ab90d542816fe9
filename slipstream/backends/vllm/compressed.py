"""Our packed weights (slipstream/kernels/quant_formats.py) as compressed-tensors' tensors, written by our own code.

compressed-tensors (what llm-compressor writes and vLLM reads) stores, per quantized Linear `<path>`:
- pack-quantized (w4a16, w8a16): `weight_packed` int32 [N, ceil(K*bits/32)]: value q + 2^(bits-1) (unsigned),
  element i of each run of 32/bits at bit i*bits of its word (lowest first); `weight_scale` [N, groups]
  (per-channel: [N, 1]); `weight_shape` int64 [2] = (N, K); asymmetric only: `weight_zero_point` int32, the zero
  points (zp + 2^(bits-1)) packed the same way along the output dim: [ceil(N*bits/32), groups].
- int-quantized (w8a8) / float-quantized (fp8): `weight` int8 / float8_e4m3fn [N, K] and `weight_scale` [N, 1].
Dequantized: (q - zp) * scale, which is our formats' own dequantization, so the values are ours exactly.

Our int4 nibbles are q + 8 stored low nibble first along k, so their bytes read as little-endian int32 words are
`weight_packed` already; int8 is offset by 128 and read 4 bytes to a word. Scales are stored in fp32 (what vLLM's
int8/fp8 layers hold; its int4 layers cast them on load), so a checkpoint dequantizes to our weights bit for bit.
"""
from __future__ import annotations

import math
import sys
from typing import Optional

import torch
from torch import Tensor

from slipstream.backends.errors import ExportError
from slipstream.kernels.quant_formats import QuantizedWeight, QuantSpec, quantize

from . import Scheme

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships wheels for is little-endian
    raise ImportError("the vLLM exporter packs int32 words by reinterpreting bytes: it needs a little-endian host")


def spec(scheme: Scheme) -> QuantSpec:
    if scheme.ours == "int4":
        return QuantSpec("int4", scheme.group_size, scheme.symmetric)
    return QuantSpec(scheme.ours)


def check_shape(name: str, shape: tuple[int, ...], scheme: Scheme) -> None:
    """ExportError if vLLM's kernels cannot take this Linear weight in `scheme`."""
    if len(shape) != 2:
        raise ExportError(f"{name} has shape {shape}, not a 2-D Linear weight; it cannot be quantized")
    if scheme.group_size and shape[1] % scheme.group_size:
        raise ExportError(f"{name} has {shape[1]} input features, not a multiple of the int4 group size "
                          f"{scheme.group_size} that vLLM's int4 kernels need; use quant='w8a16' or 'w8a8' instead")


def reuse_refusal(qw: QuantizedWeight, scheme: Scheme) -> Optional[str]:
    """None if `qw` (from slipstream's quantize-weights pass) can be written as `scheme` as it is, else why not."""
    if qw.fmt != scheme.ours:
        return f"{qw.fmt} weights are not {scheme.name}'s {scheme.ours}"
    if qw.fmt == "int4" and qw.group != scheme.group_size:
        return f"int4 group size {qw.group} is not {scheme.name}'s {scheme.group_size}"
    if qw.fmt == "int4" and (qw.aux.numel() == 0) != scheme.symmetric:
        have = "symmetric" if qw.aux.numel() == 0 else "asymmetric"
        return f"{have} int4 is not {scheme.name} (use quant='{'w4a16' if have == 'symmetric' else 'w4a16_asym'}')"
    return None


def quantize_weight(weight: Tensor, scheme: Scheme) -> QuantizedWeight:
    return quantize(weight, spec(scheme))


def planned(shape: tuple[int, int], scheme: Scheme) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """suffix -> (dtype, shape) of the tensors `compress` returns for an [N, K] weight (no data needed)."""
    n, k = shape
    if scheme.format == "pack-quantized":
        groups = k // scheme.group_size if scheme.group_size else 1
        out = {"weight_packed": (torch.int32, (n, math.ceil(k * scheme.bits / 32))),
               "weight_scale": (torch.float32, (n, groups)),
               "weight_shape": (torch.int64, (2,))}
        if not scheme.symmetric:
            out["weight_zero_point"] = (torch.int32, (math.ceil(n * scheme.bits / 32), groups))
        return out
    dtype = torch.int8 if scheme.format == "int-quantized" else torch.float8_e4m3fn
    return {"weight": (dtype, (n, k)), "weight_scale": (torch.float32, (n, 1))}


def _words(data: Tensor, per_word: int) -> Tensor:
    """uint8 [rows, cols] -> int32 [rows, ceil(cols/per_word)]: bytes read as little-endian words, zero padded."""
    pad = -data.shape[1] % per_word
    if pad:
        data = torch.nn.functional.pad(data, (0, pad))
    return data.contiguous().reshape(-1).view(torch.int32).reshape(data.shape[0], -1)


def _nibbles_to_words(u: Tensor) -> Tensor:
    """uint8 nibbles [rows, cols] -> int32 [rows, ceil(cols/8)], element i at bits 4*(i % 8) of word i // 8."""
    pad = -u.shape[1] % 8
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    return _words(u[:, 0::2] | (u[:, 1::2] << 4), 4)


def compress(qw: QuantizedWeight, scheme: Scheme) -> dict[str, Tensor]:
    """compressed-tensors' tensors for one Linear (suffix -> tensor), from our packed weight `qw`."""
    n, k = qw.shape
    if reuse_refusal(qw, scheme) is not None:
        raise ValueError(f"compress: {reuse_refusal(qw, scheme)}")
    scale = qw.scales.float().reshape(n, -1).contiguous()
    if scheme.format != "pack-quantized":
        return {"weight": qw.packed.contiguous(), "weight_scale": scale}
    if scheme.bits == 8:
        packed = _words((qw.packed.to(torch.int16) + 128).to(torch.uint8), 4)
    else:
        packed = _words(qw.packed, 4)  # [N, K/2] bytes of nibbles, K a multiple of the group (check_shape)
    out = {"weight_packed": packed, "weight_scale": scale, "weight_shape": torch.tensor([n, k], dtype=torch.int64)}
    if not scheme.symmetric:
        out["weight_zero_point"] = _nibbles_to_words(qw.aux.reshape(n, -1).t().contiguous()).t().contiguous()
    return out
