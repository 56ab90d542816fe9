"""Modules slipstream swaps into a model: `QuantLinear`, an `nn.Linear` whose weight is stored quantized.

The quantize-weights pass replaces linears with these before capture, so captured graphs call
`slipstream::quant_linear` on the packed buffers (and fuse-lora-linear can fold peft's adapters into the same
call). Quantization is one-way: `restore()` undoes capture, not this; `dequantize()` / `slipstream.merge_lora()`
give dense weights back.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from slipstream.kernels.lora_linear import base_weight, quant_linear_op
from slipstream.kernels.quant_formats import QuantizedWeight, QuantSpec, quantize


class QuantLinear(nn.Module):
    """y = x @ dequantize(W).T + bias, with W packed in one of docs/quantization.md's formats (buffers, frozen)."""

    def __init__(self, weight: QuantizedWeight, bias: Optional[nn.Parameter] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.fmt, self.group, self.weight_dtype = weight.fmt, weight.group, weight.dtype
        self.register_buffer("packed", weight.packed)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("aux", weight.aux)
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> "QuantLinear":
        with torch.no_grad():
            quantized = quantize(linear.weight.detach(), spec)
        return cls(quantized, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return quant_linear_op(x, self.packed, self.scales, self.aux, self.fmt, self.group, self.out_features,
                               self.bias)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The dense [out, in] weight (in the original dtype unless `dtype` is given)."""
        return base_weight(self.packed, self.scales, self.aux, self.fmt, self.group, self.out_features,
                           self.in_features, dtype or self.weight_dtype)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.aux))

    def extra_repr(self) -> str:
        group = f", group={self.group}" if self.fmt == "int4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.fmt}{group}")
