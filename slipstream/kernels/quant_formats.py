"""Quantized weight formats: the PyTorch reference for docs/quantization.md.

Every format travels as the triple (packed, scales, aux) plus the ints (group, N, K), so custom ops can take it as
plain tensors; `QuantizedWeight` only bundles them. The Triton kernels decode the same bytes, so any change here is
a change to the contract in the doc. nf4 follows bitsandbytes op for op (fp32 reciprocal, fp32 midpoints, ties to
the lower index) rather than the simplest formula, because its bytes must equal `quantize_4bit`'s: they do,
byte for byte, against bitsandbytes 0.50's PyTorch path, and dequantizing bitsandbytes' tensors gives its values
bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

FORMATS = ("int8", "int4", "nf4", "fp8")
INT4_GROUPS = (32, 64, 128)
NF4_BLOCK = 64  # bitsandbytes' blocksize for 4-bit weights; the kernels assume it
ABSMAX_BLOCK = 256  # bitsandbytes' blocksize for the double-quantized absmax
_DEFAULT_GROUP = 128
_FP8_MAX = 448.0  # largest finite float8_e4m3fn

# NF4 (Dettmers et al. 2023, "QLoRA", appendix E), as bitsandbytes publishes them in get_4bit_type("nf4").
NF4_CODE = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)


def dynamic_map() -> Tensor:
    """bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`): 256 sorted fp32 values.

    Each decade 10^-6 .. 10^0 gets 2^i linearly spaced values (midpoints of linspace(0.1, 1, 2^i + 1)), both signs,
    plus 0 and 1.0. The arithmetic stays in fp32 like bitsandbytes', so the values match it bit for bit.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)
        mids = (10.0 ** (i - 6)) * ((edges[:-1] + edges[1:]) / 2.0)
        values += mids.tolist() + (-mids).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize a weight to. Only int4 has a choice of group; nf4's block is fixed at 64."""

    format: str
    group_size: int = _DEFAULT_GROUP
    symmetric: bool = True
    double_quant: bool = True  # nf4 only: bitsandbytes' compress_statistics

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown quantization format {self.format!r}; valid formats: {', '.join(FORMATS)}")
        if self.format == "int4" and self.group_size not in INT4_GROUPS:
            raise ValueError(f"int4 group_size must be one of {INT4_GROUPS}, got {self.group_size}")
        # The default is accepted everywhere so one spec shape serves all formats; anything else asked for a
        # layout the format does not have.
        if self.format == "nf4" and self.group_size not in (NF4_BLOCK, _DEFAULT_GROUP):
            raise ValueError(f"nf4 always uses blocks of {NF4_BLOCK}; got group_size={self.group_size}")
        if self.format in ("int8", "fp8") and self.group_size != _DEFAULT_GROUP:
            raise ValueError(f"{self.format} is per output channel and takes no group_size (got {self.group_size})")
        if not self.symmetric and self.format != "int4":
            raise ValueError(f"only int4 has an asymmetric variant, not {self.format}")

    def group(self) -> int:
        """The `group` int of the triple: 0 for per-channel formats, 64 for nf4."""
        return {"int8": 0, "fp8": 0, "int4": self.group_size, "nf4": NF4_BLOCK}[self.format]


@dataclass(eq=False)  # a field-wise == would compare tensors, which has no single truth value
class QuantizedWeight:
    fmt: str
    packed: Tensor
    scales: Tensor
    aux: Tensor
    group: int
    shape: tuple[int, int]
    dtype: torch.dtype  # the original weight's dtype, what dequantize returns unless told otherwise

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        n, k = self.shape
        return dequantize(self.packed, self.scales, self.aux, self.fmt, self.group, n, k, dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.packed, self.scales, self.aux


# ---------------------------------------------------------------------------------------------- nibble packing


def _check_nibbles(u: Tensor) -> None:
    if u.dtype.is_floating_point or u.dtype == torch.bool:
        raise TypeError(f"nibbles must be an integer tensor, got {u.dtype}")
    if u.numel() and (u.min() < 0 or u.max() > 15):
        raise ValueError("nibbles must lie in 0..15")


def pack_int4_rows(u: Tensor) -> Tensor:
    """[N, K] nibbles -> uint8 [N, ceil(K/2)], low nibble first along k (an odd K pads a zero high nibble)."""
    _check_nibbles(u)
    u = u.to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4_rows(packed: Tensor, k: int) -> Tensor:
    """uint8 [N, ceil(k/2)] -> uint8 nibbles [N, k]."""
    u = torch.stack((packed & 0xF, packed >> 4), dim=-1)
    return u.reshape(*packed.shape[:-1], -1)[..., :k]


def pack_nf4(idx: Tensor) -> Tensor:
    """Flat nibbles -> uint8 [ceil(n/2)], high nibble first (bitsandbytes' order); an odd count pads a zero."""
    _check_nibbles(idx)
    idx = idx.reshape(-1).to(torch.uint8)
    if idx.numel() % 2:
        idx = torch.nn.functional.pad(idx, (0, 1))
    return (idx[0::2] << 4) | idx[1::2]


def unpack_nf4(packed: Tensor, count: int) -> Tensor:
    """uint8 [ceil(count/2)] -> uint8 nibbles [count]."""
    packed = packed.reshape(-1)
    return torch.stack((packed >> 4, packed & 0xF), dim=-1).reshape(-1)[:count]


# ---------------------------------------------------------------------------------------------- quantize


def _per_channel_scale(w: Tensor, qmax: float) -> Tensor:
    scale = w.abs().amax(dim=1) / qmax
    return torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row must not divide by zero


def _quantize_int8(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    scale = _per_channel_scale(w, 127.0)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale, w.new_empty(0)


def _quantize_fp8(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    scale = _per_channel_scale(w, _FP8_MAX)
    # The clamp only catches the last-ulp overshoot of w / scale; e4m3fn has no inf, past 464 the cast gives NaN.
    q = torch.clamp(w / scale[:, None], -_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale, w.new_empty(0)


def _quantize_int4(w: Tensor, group: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    n, k = w.shape
    kp = math.ceil(k / group) * group
    g = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, kp // group, group)
    if symmetric:
        scale = g.abs().amax(dim=2) / 7
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        u = torch.clamp(torch.round(g / scale[..., None]), -8, 7) + 8
        zeros = torch.empty(0, dtype=torch.uint8, device=w.device)
    else:
        lo = g.amin(dim=2).clamp(max=0)
        hi = g.amax(dim=2).clamp(min=0)
        scale = (hi - lo) / 15
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.clamp(torch.round(-lo / scale), 0, 15)
        u = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], 0, 15)
        zeros = zero.to(torch.uint8)
    return pack_int4_rows(u.reshape(n, kp).to(torch.uint8)), scale, zeros


def _blockwise_codes(flat: Tensor, block: int, code: Tensor) -> tuple[Tensor, Tensor]:
    """bitsandbytes' blockwise quantization of `flat` to the sorted `code`: (indices over zero-padded blocks, absmax).

    As in its CUDA kernel and PyTorch path: scale by the fp32 reciprocal of the block's absmax (a zero block
    becomes 0 * 1e38 = 0), then take the nearest code by its fp32 midpoints, ties to the lower index. Any other
    rounding (true division, distances) would change a byte now and then.
    """
    blocks = torch.nn.functional.pad(flat, (0, -flat.numel() % block)).reshape(-1, block)
    absmax = blocks.abs().amax(dim=1)  # the zero padding never changes it
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)
    idx = torch.bucketize(scaled.reshape(-1), (code[:-1] + code[1:]) / 2)
    return idx, absmax


def _quantize_nf4(w: Tensor, double_quant: bool) -> tuple[Tensor, Tensor, Tensor]:
    flat = w.reshape(-1)
    idx, absmax = _blockwise_codes(flat, NF4_BLOCK, NF4_CODE.to(w.device))
    # idx covers whole blocks, so an odd count's last low nibble is the code of the padding 0.0 (7), as in
    # bitsandbytes' bytes.
    packed = pack_nf4(idx[: 2 * math.ceil(flat.numel() / 2)])
    if not double_quant:
        return packed, absmax, w.new_empty(0)
    dmap = dynamic_map().to(w.device)
    offset = absmax.mean()
    codes, absmax2 = _blockwise_codes(absmax - offset, ABSMAX_BLOCK, dmap)
    codes = codes[: absmax.numel()].to(torch.uint8)
    return packed, codes, torch.cat((dmap, offset.reshape(1), absmax2))


def quantize(weight: Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Quantize an nn.Linear weight [N, K] (any float dtype) on its own device; the math runs in fp32."""
    if weight.dim() != 2:
        raise ValueError(f"quantize expects a 2-D [out_features, in_features] weight, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"quantize expects a floating-point weight, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"quantize got an empty weight of shape {tuple(weight.shape)}")
    w = weight.detach().float()
    if spec.format == "int8":
        packed, scales, aux = _quantize_int8(w)
    elif spec.format == "fp8":
        packed, scales, aux = _quantize_fp8(w)
    elif spec.format == "int4":
        packed, scales, aux = _quantize_int4(w, spec.group_size, spec.symmetric)
    else:
        packed, scales, aux = _quantize_nf4(w, spec.double_quant)
    n, k = weight.shape
    return QuantizedWeight(spec.format, packed, scales, aux, spec.group(), (n, k), weight.dtype)


# ---------------------------------------------------------------------------------------------- dequantize


def _nf4_absmax(scales: Tensor, aux: Tensor) -> Tensor:
    if scales.dtype != torch.uint8:
        return scales.float()
    dmap, offset, absmax2 = aux[:256], aux[256], aux[257:]
    # Same fp32 ops as bitsandbytes (code * absmax2, then + offset) so the result matches it bit for bit.
    return dmap[scales.long()] * absmax2.repeat_interleave(ABSMAX_BLOCK)[: scales.numel()] + offset


def dequantize(
    packed: Tensor, scales: Tensor, aux: Tensor, fmt: str, group: int, n: int, k: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The triple + scalars of the doc -> the weight [n, k] in `dtype` (computed in fp32)."""
    if fmt in ("int8", "fp8"):
        w = packed.float() * scales[:, None]
    elif fmt == "int4":
        kp = math.ceil(k / group) * group
        u = unpack_int4_rows(packed, kp).float()
        zero = aux.float() if aux.numel() else torch.full_like(scales, 8.0)
        w = ((u - zero.repeat_interleave(group, dim=1)) * scales.repeat_interleave(group, dim=1))[:, :k]
    elif fmt == "nf4":
        idx = unpack_nf4(packed, n * k).long()
        absmax = _nf4_absmax(scales, aux)
        w = (NF4_CODE.to(packed.device)[idx] * absmax.repeat_interleave(group)[: n * k]).reshape(n, k)
    else:
        raise ValueError(f"unknown quantization format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return w.to(dtype)


# ---------------------------------------------------------------------------------------------- bitsandbytes


def from_bnb(weight_uint8: Tensor, quant_state) -> QuantizedWeight:
    """Read a bitsandbytes `Params4bit` (its data and `quant_state`) as an nf4 QuantizedWeight, sharing tensors.

    Only nf4 with blocksize 64 maps onto our layout (fp4 has another codebook, other blocksizes another `group`).
    """
    if quant_state.quant_type != "nf4":
        raise ValueError(f"from_bnb reads nf4 only; this weight is {quant_state.quant_type!r}")
    if quant_state.blocksize != NF4_BLOCK:
        raise ValueError(f"from_bnb needs blocksize {NF4_BLOCK}, the only nf4 block the kernels decode; "
                         f"got {quant_state.blocksize}")
    if len(quant_state.shape) != 2:
        raise ValueError(f"from_bnb expects a 2-D Linear weight, got shape {tuple(quant_state.shape)}")
    if not torch.equal(quant_state.code.float().cpu(), NF4_CODE):
        raise ValueError("from_bnb: quant_state.code is not the standard NF4 codebook")
    n, k = (int(d) for d in quant_state.shape)
    # bitsandbytes may store the bytes in another dtype (quant_storage); the bytes are what count.
    packed = weight_uint8.contiguous().view(torch.uint8).reshape(-1)
    if packed.numel() != math.ceil(n * k / 2):
        raise ValueError(f"from_bnb: {packed.numel()} packed bytes do not hold a {n}x{k} weight")
    state2 = getattr(quant_state, "state2", None)
    if state2 is None:
        scales, aux = quant_state.absmax.float(), torch.empty(0, device=packed.device)
    else:
        if state2.blocksize != ABSMAX_BLOCK or state2.code.numel() != 256:
            raise ValueError(f"from_bnb: double quantization must use the 256-entry map in blocks of "
                             f"{ABSMAX_BLOCK}; got blocksize {state2.blocksize}")
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=packed.device).reshape(1)
        scales = quant_state.absmax
        aux = torch.cat((state2.code.float().to(packed.device), offset, state2.absmax.float().to(packed.device)))
    return QuantizedWeight("nf4", packed, scales, aux, NF4_BLOCK, (n, k), quant_state.dtype)
