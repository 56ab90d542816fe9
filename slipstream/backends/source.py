"""Where exported tensors come from (GGUF and vLLM exporters): an in-memory model (LoRA merged, quantized weights
dequantized, unless asked otherwise) or a Hugging Face checkpoint directory read lazily from safetensors, one tensor
at a time (never the whole model in memory)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..gc_pause import gc_paused
from .errors import ExportError

# Buffers HF models carry that are not weights (recomputed by every runtime).
_SKIP_SUFFIXES = ("rotary_emb.inv_freq", ".original_inv_freq")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I8": torch.int8, "U8": torch.uint8, "I32": torch.int32, "I64": torch.int64,
                       "F8_E4M3": torch.float8_e4m3fn, "BOOL": torch.bool}


class ModelSource:
    """An nn.Module (plain, peft, or optimized by slipstream): slipstream.merge_lora gives its dense weights.

    adapters=False: base weights without LoRA (the adapter is exported apart). keep_quantized=True: QuantLinear
    weights stay packed, in `self.quantized` (plain weight name -> QuantizedWeight), and are not in `names()`.
    """

    def __init__(self, model: torch.nn.Module, *, adapters: bool = True, keep_quantized: bool = False):
        from slipstream.kernels.quant_formats import QuantizedWeight
        from slipstream.merge import merge_lora, quantized_linears

        self.config = getattr(model, "config", None)
        if self.config is None:
            raise ExportError("the model has no Hugging Face `config`: export needs the architecture's "
                              "hyperparameters (export a transformers model, or its checkpoint directory)")
        state = merge_lora(model, adapters=adapters, skip_quantized=keep_quantized)
        self._state = {k: v for k, v in state.items() if not k.endswith(_SKIP_SUFFIXES)}
        self.quantized = {}
        if keep_quantized:
            for name, m in quantized_linears(model, adapters).items():
                self.quantized[name] = QuantizedWeight(m.fmt, m.packed, m.scales, m.aux, m.group,
                                                       (m.out_features, m.in_features), m.weight_dtype)

    def dtype(self, name: str) -> torch.dtype:
        return self._state[name].dtype

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def load(self, name: str) -> torch.Tensor:
        return self._state[name].detach()


class CheckpointSource:
    """A directory with config.json and model*.safetensors (single file or sharded with an index)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise ExportError(f"{self.path} has no config.json: not a Hugging Face checkpoint directory")
        self._where = self._index()

    @functools.cached_property
    def config(self):
        """The transformers config (AutoConfig); the GGUF exporter reads config.json without it (config_json.py)."""
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.path)
        except Exception as e:  # a malformed config.json
            raise ExportError(f"{self.path / 'config.json'} could not be read: {e}") from e

    def _index(self) -> dict[str, Path]:
        from safetensors import safe_open

        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ExportError(f"{self.path} holds no *.safetensors weights (pytorch .bin checkpoints are not read)")
        where = {}
        for f in files:
            try:
                with safe_open(f, framework="pt") as st:
                    where.update({k: f for k in st.keys() if not k.endswith(_SKIP_SUFFIXES)})
            except Exception as e:
                raise ExportError(f"{f} is not a readable safetensors file ({e}); re-download or re-save it") from e
        return where

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        with safe_open(self._where[name], framework="pt") as st:
            return tuple(st.get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype, read from the safetensors header (no tensor data)."""
        from safetensors import safe_open

        with safe_open(self._where[name], framework="pt") as st:
            code = st.get_slice(name).get_dtype()
        return _SAFETENSORS_DTYPES.get(code, torch.float32)

    def load(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype (the writer converts it to fp32 a slice of rows at a time)."""
        from safetensors import safe_open

        try:
            with safe_open(self._where[name], framework="pt") as st:
                return st.get_tensor(name)
        except Exception as e:
            raise ExportError(f"tensor {name!r} in {self._where[name]} could not be read: {e}") from e

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            with gc_paused():  # transformers parses tokenizer.json in Python too
                return AutoTokenizer.from_pretrained(self.path)
        except Exception as e:
            raise ExportError(f"no usable tokenizer in {self.path} ({e}); pass tokenizer=... to export") from e
