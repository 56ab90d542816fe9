"""merge_lora: the dense state dict of a (peft, possibly quantized) model, LoRA folded in, for export.

For every peft LoRA linear: W = base weight (dequantized if it is a QuantLinear) + sum over active adapters of
scaling * B @ A, and bias = base bias + sum of scaling * B's bias for adapters trained with lora_bias=True (an
error if the base has no bias to hold it); a QuantLinear without adapters is dequantized. Keys are the plain model's (peft's
`base_model.model.` prefix and `.base_layer` infix removed), so the result loads into the model class the peft
model was built from (`load_state_dict(strict=True)`).

Exporters that write adapters apart (`adapters=False`: base weights only) or reuse packed weights
(`skip_quantized=True`: the weights of `quantized_linears(model, adapters)` are left out, their biases kept) ask
for less.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from slipstream.modules import QuantLinear

_PEFT_PREFIX = "base_model.model."


def _plain_name(name: str) -> str:
    name = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
    return name.replace(".base_layer.", ".")


def _base_weight(base: nn.Module, dtype: torch.dtype) -> Tensor:
    if isinstance(base, QuantLinear):
        return base.dequantize(torch.float32).to(dtype)
    return base.weight.detach().to(dtype)


def _lora_delta(layer: nn.Module) -> Tensor | None:
    """sum_i scaling_i * B_i @ A_i over the layer's active adapters, in fp32; None if it has none."""
    if getattr(layer, "merged", False):
        raise ValueError("merge_lora: the model's adapters are already merged into its weights (peft merge_adapter);"
                         " unmerge them first or export the model as it is")
    delta = None
    for name in getattr(layer, "active_adapters", ()):
        if name not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(name, False):
            raise ValueError(f"merge_lora: adapter {name!r} is DoRA, which merge_lora does not fold")
        a, b = layer.lora_A[name].weight.float(), layer.lora_B[name].weight.float()
        d = layer.scaling[name] * (b @ a)
        delta = d if delta is None else delta + d
    return delta


def _lora_bias(layer: nn.Module) -> Tensor | None:
    """sum_i scaling_i * bias of B_i over the active adapters trained with peft's lora_bias=True (fp32); None if
    none has one."""
    delta = None
    for name in getattr(layer, "active_adapters", ()):
        if name in layer.lora_B and layer.lora_B[name].bias is not None:
            d = layer.scaling[name] * layer.lora_B[name].bias.float()
            delta = d if delta is None else delta + d
    return delta


def quantized_linears(model: nn.Module, adapters: bool = True) -> dict[str, QuantLinear]:
    """Plain weight name -> QuantLinear whose packed weight is exported as it is: every QuantLinear without LoRA, and
    with `adapters=False` (LoRA written apart) the quantized bases of LoRA layers too."""
    lora_layers = [p for p, m in model.named_modules() if getattr(m, "base_layer", None) is not None
                   and hasattr(m, "lora_A")]
    out = {}
    for path, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        under_lora = any(path.startswith(p + ".") for p in lora_layers)
        if not under_lora or not adapters:
            out[_plain_name(f"{path}.weight")] = module
    return out


@torch.no_grad()
def merge_lora(model: nn.Module, dtype: torch.dtype | None = None, *, adapters: bool = True,
               skip_quantized: bool = False) -> dict[str, Tensor]:
    """Dense weights with LoRA merged (in `dtype`, default each base weight's own dtype), plain key names.

    adapters=False: the base weights without any LoRA delta. skip_quantized=True: leave out the weights of
    `quantized_linears(model, adapters)` (the caller exports their packed form)."""
    out: dict[str, Tensor] = {}
    handled: set[str] = set()
    lora_layers: list[str] = []
    skipped = set(quantized_linears(model, adapters)) if skip_quantized else set()
    for path, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(module, "lora_A"):
            lora_layers.append(path)
            target = dtype or (base.weight_dtype if isinstance(base, QuantLinear) else base.weight.dtype)
            name = _plain_name(f"{path}.weight")
            if name not in skipped:
                weight = _base_weight(base, torch.float32)
                delta = _lora_delta(module) if adapters else None
                out[name] = (weight if delta is None else weight + delta).to(target)
            bias_delta = _lora_bias(module) if adapters else None
            if bias_delta is not None and base.bias is None:
                raise ValueError(f"merge_lora: {path} has a LoRA bias (peft lora_bias=True) but its base layer has "
                                 "no bias, so the merged model cannot hold it; train the adapter without lora_bias")
            if base.bias is not None:
                bias = base.bias.detach().float() + (0 if bias_delta is None else bias_delta)
                out[_plain_name(f"{path}.bias")] = bias.to(dtype or base.bias.dtype)
            handled.update(n for n, _ in module.named_parameters(prefix=path))
            handled.update(n for n, _ in module.named_buffers(prefix=path))
        elif isinstance(module, QuantLinear) and not any(path.startswith(p + ".") for p in lora_layers):
            if _plain_name(f"{path}.weight") not in skipped:
                out[_plain_name(f"{path}.weight")] = module.dequantize(dtype)
            if module.bias is not None:
                out[_plain_name(f"{path}.bias")] = module.bias.detach().to(dtype or module.bias.dtype)
            handled.update(n for n, _ in module.named_parameters(prefix=path))
            handled.update(n for n, _ in module.named_buffers(prefix=path))
    for name, tensor in model.state_dict(keep_vars=False).items():
        if name in handled or "lora_" in name or _plain_name(name) in out:
            continue
        out[_plain_name(name)] = tensor.detach().to(dtype) if dtype and tensor.is_floating_point() else tensor
    return out
