"""Where exported tensors come from: an in-memory model (LoRA merged, quantized weights dequantized) or a Hugging
Face checkpoint directory read lazily from safetensors, one tensor at a time (never the whole model in memory)."""
from __future__ import annotations

from pathlib import Path

import torch

from .arch import ExportError

# Buffers HF models carry that are not weights (recomputed by every runtime).
_SKIP_SUFFIXES = ("rotary_emb.inv_freq", ".original_inv_freq")


class ModelSource:
    """An nn.Module (plain, peft, or optimized by slipstream): slipstream.merge_lora gives its dense weights."""

    def __init__(self, model: torch.nn.Module):
        from slipstream.merge import merge_lora

        self.config = getattr(model, "config", None)
        if self.config is None:
            raise ExportError("the model has no Hugging Face `config`: GGUF export needs the architecture's "
                              "hyperparameters (export a transformers model, or its checkpoint directory)")
        self._state = {k: v for k, v in merge_lora(model).items() if not k.endswith(_SKIP_SUFFIXES)}

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def load(self, name: str) -> torch.Tensor:
        return self._state[name].detach()


class CheckpointSource:
    """A directory with config.json and model*.safetensors (single file or sharded with an index)."""

    def __init__(self, path: str | Path):
        from transformers import AutoConfig

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise ExportError(f"{self.path} has no config.json: not a Hugging Face checkpoint directory")
        try:
            self.config = AutoConfig.from_pretrained(self.path)
        except Exception as e:  # a malformed config.json
            raise ExportError(f"{self.path / 'config.json'} could not be read: {e}") from e
        self._where = self._index()

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
            return AutoTokenizer.from_pretrained(self.path)
        except Exception as e:
            raise ExportError(f"no usable tokenizer in {self.path} ({e}); pass tokenizer=... to export") from e
