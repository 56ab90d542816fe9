"""vLLM export backend: a checkpoint directory vLLM serves (docs/vllm.md).

`SCHEMES` maps each `quant` name to its compressed-tensors scheme: the on-disk `format`, the `weights` and
`input_activations` argument dicts written into config.json's `quantization_config`, and the slipstream
QuantSpec (slipstream/kernels/quant_formats.py) whose packed weights it stores. Submodules: `compressed` (our packing
into compressed-tensors' tensors), `adapter` (peft LoRA adapter dir), `layout` (config, tokenizer, model card, shards),
`writer` (streaming safetensors + atomic directory), `verify` (reload with transformers, compare logits), `export`.

Kept free of heavy imports so that `import slipstream.backends.vllm` stays cheap; import the submodules directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GROUP = 128  # int4 group size: what llm-compressor's W4A16 writes and vLLM's int4 kernels expect


@dataclass(frozen=True)
class Scheme:
    name: str                       # the `quant` option
    format: str                     # compressed-tensors format string
    ours: str                       # slipstream QuantSpec format: int4 | int8 | fp8
    bits: int
    weights: dict
    input_activations: Optional[dict] = None
    symmetric: bool = True
    group_size: Optional[int] = None

    def config_group(self) -> dict:
        return {"format": self.format, "input_activations": self.input_activations, "output_activations": None,
                "targets": ["Linear"], "weights": self.weights}


def _args(bits: int, kind: str, strategy: str, group: Optional[int] = None, symmetric: bool = True,
          dynamic: bool = False) -> dict:
    return {"dynamic": dynamic, "group_size": group, "num_bits": bits, "strategy": strategy, "symmetric": symmetric,
            "type": kind}


_TOKEN_INT8 = _args(8, "int", "token", dynamic=True)
_TOKEN_FP8 = _args(8, "float", "token", dynamic=True)

SCHEMES: dict[str, Scheme] = {
    "w4a16": Scheme("w4a16", "pack-quantized", "int4", 4, _args(4, "int", "group", GROUP), group_size=GROUP),
    "w4a16_asym": Scheme("w4a16_asym", "pack-quantized", "int4", 4, _args(4, "int", "group", GROUP, symmetric=False),
                         symmetric=False, group_size=GROUP),
    "w8a16": Scheme("w8a16", "pack-quantized", "int8", 8, _args(8, "int", "channel")),
    "w8a8": Scheme("w8a8", "int-quantized", "int8", 8, _args(8, "int", "channel"), _TOKEN_INT8),
    "fp8": Scheme("fp8", "float-quantized", "fp8", 8, _args(8, "float", "channel"), _TOKEN_FP8),
}

# Every `quant` the vLLM exporter accepts (None: dense weights in the export dtype).
QUANTS = (None, *SCHEMES)
LORA_MODES = ("merge", "adapter")


def scheme(quant: Optional[str]) -> Optional[Scheme]:
    """The Scheme for a `quant` name (None for dense), or ValueError listing the valid names."""
    if quant is None:
        return None
    if quant not in SCHEMES:
        raise ValueError(f"unknown vLLM quant scheme {quant!r}; choose one of: None (dense), {', '.join(SCHEMES)}")
    return SCHEMES[quant]
