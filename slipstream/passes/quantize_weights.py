"""quantize-weights: swap `nn.Linear` layers for `slipstream.modules.QuantLinear` (packed weight + scales), before capture.

A module pass: it changes what the captured graphs' inputs are (packed buffers instead of a weight parameter),
so it runs on the module tree ahead of every graph pass. Captured graphs then call `slipstream::quant_linear`,
which fuse-lora-linear folds peft's adapters into. Formats and layouts: docs/quantization.md.

Layers bitsandbytes already quantized (`Linear4bit` NF4, `Linear8bitLt` int8) are read as they are, sharing their
bytes (the formats are bit-compatible), whatever `format` says: re-quantizing would only add error.

Never touched: embeddings and norms (not linears), a linear whose weight is tied to an embedding (the output
head of tied-embedding models), peft's adapter weights (lora_A / lora_B: they are what training updates), and by
default `lm_head` (bitsandbytes and QLoRA keep the output head dense too; `include` can ask for it).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .base import ModulePass, PassOptions, PassStats, Rejection, path_selected

_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


@dataclass(frozen=True)
class QuantizeWeightsOptions(PassOptions):
    format: str = "nf4"          # int8 | int4 | nf4 | fp8
    group_size: int = 128        # int4 only (32, 64 or 128); nf4 always uses bitsandbytes' 64
    symmetric: bool = True       # int4 only
    double_quant: bool = True    # nf4 only: quantize the block absmax too (QLoRA's default)
    exclude: str = "*lm_head"

    def __post_init__(self):
        self.spec()  # validates format and group size when the pipeline text is parsed

    def spec(self):
        from slipstream.kernels.quant_formats import QuantSpec

        # group-size only means something for int4; the other formats keep QuantSpec's default
        if self.format == "int4":
            return QuantSpec(self.format, self.group_size, self.symmetric, self.double_quant)
        return QuantSpec(self.format, symmetric=self.symmetric, double_quant=self.double_quant)


def _tied_to_embedding(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def _is_adapter(path: str) -> bool:
    return any(part in _ADAPTER_PARTS for part in path.split("."))


def _refusal(path: str, linear: nn.Linear, tied: set[int], options: QuantizeWeightsOptions) -> str | None:
    if id(linear.weight) in tied:
        return "weight tied to an embedding (quantizing it would change the embedding too)"
    if not path_selected(path, options):
        explicit = any(fnmatch.fnmatchcase(path, g) for g in options.exclude.split("|") if g)
        return "excluded by the exclude option" if explicit else "not selected by the include option"
    if linear.weight.dim() != 2 or not linear.weight.is_floating_point():
        return f"weight is {linear.weight.dtype} {tuple(linear.weight.shape)}, not a 2-D float matrix"
    return None


def _from_bitsandbytes(module: nn.Module):
    """(QuantLinear sharing a bitsandbytes layer's bytes, None) or (None, why not); (None, None) if `module` is not
    a bitsandbytes layer at all."""
    from slipstream.kernels.quant_formats import QuantizedWeight, from_bnb
    from slipstream.modules import QuantLinear

    # peft's LoRA wrappers reuse the names Linear4bit / Linear8bitLt: the module must be bitsandbytes' own linear
    if not type(module).__module__.startswith("bitsandbytes") or not isinstance(module, nn.Linear):
        return None, None
    kind, weight = type(module).__name__, getattr(module, "weight", None)
    if kind == "Linear4bit":
        if getattr(weight, "quant_state", None) is None:
            return None, "bitsandbytes Linear4bit not quantized yet (move it to its device first)"
        try:
            return QuantLinear(from_bnb(weight.data, weight.quant_state), module.bias), None
        except ValueError as e:
            return None, str(e)
    if kind == "Linear8bitLt":
        # LLM.int8's row-wise absmax: W = CB * SCB / 127, our int8 format with scale = SCB / 127. bitsandbytes
        # moves SCB from the weight to module.state on the first forward.
        scb = getattr(weight, "SCB", None)
        scb = scb if scb is not None else getattr(getattr(module, "state", None), "SCB", None)
        if weight is None or weight.dtype != torch.int8 or scb is None:
            return None, "bitsandbytes Linear8bitLt without int8 weights and row scales (has_fp16_weights=True?)"
        dtype = module.bias.dtype if module.bias is not None else torch.float16
        scales = scb.float() / 127.0
        quantized = QuantizedWeight("int8", weight.data, scales, torch.empty(0, device=scales.device), 0,
                                    tuple(weight.shape), dtype)
        return QuantLinear(quantized, module.bias), None
    return None, f"bitsandbytes {kind} is not a format slipstream reads (Linear4bit nf4, Linear8bitLt)"


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


class QuantizeWeights(ModulePass):
    name = "quantize-weights"
    Options = QuantizeWeightsOptions
    summary = "nn.Linear weights -> packed buffers (QuantLinear calling slipstream::quant_linear)"

    def run_module(self, model: nn.Module) -> tuple[PassStats, list[str]]:
        from slipstream.modules import QuantLinear

        stats, spec, tied = PassStats(self.name), self.options.spec(), _tied_to_embedding(model)
        before = after = 0
        linears = [(p, m) for p, m in model.named_modules() if type(m) is nn.Linear]
        adapters = [p for p, _ in linears if _is_adapter(p)]  # what LoRA trains: not candidates, noted below
        for path, linear in linears:
            if _is_adapter(path):
                continue
            reason = _refusal(path, linear, tied, self.options)
            if reason is not None:
                stats.rejections.append(Rejection("linear", path, reason))
                continue
            quantized = QuantLinear.from_linear(linear, spec)
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, quantized)
            before += linear.weight.numel() * linear.weight.element_size()
            after += quantized.nbytes
            stats.matches.append(("linear", path))
        notes = []
        if before:
            notes.append(f"{spec.format} weights of {len(stats.matches)} linear(s): {_mb(before)} -> {_mb(after)} "
                         f"({after / before:.3f}x)")
        read = self._read_bitsandbytes(model, stats)
        if read:
            notes.append(f"read {read} bitsandbytes layer(s) as they are (bit-compatible formats, no re-quantization)")
        if adapters:
            notes.append(f"kept {len(adapters)} LoRA adapter linear(s) dense (they are what training updates)")
        others = [m for p, m in model.named_modules() if type(m) is not nn.Linear and isinstance(m, nn.Linear)]
        if others:
            kinds = sorted({type(m).__name__ for m in others})
            notes.append(f"left as they are: {len(others)} nn.Linear subclass module(s) ({', '.join(kinds)})")
        return stats, notes

    @staticmethod
    def _read_bitsandbytes(model: nn.Module, stats: PassStats) -> int:
        read = 0
        for path, module in list(model.named_modules()):
            quantized, reason = _from_bitsandbytes(module)
            if reason is not None:
                stats.rejections.append(Rejection("bitsandbytes", path, reason))
            if quantized is None:
                continue
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, quantized)
            stats.matches.append(("bitsandbytes", path))
            read += 1
        return read
