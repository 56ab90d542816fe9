"""slipstream.export (backends/exporter.py): write a model as a GGUF file for llama.cpp or a checkpoint directory
for vLLM.

    slipstream.export(model, "out.gguf", quant="q4_k_m", tokenizer=tok)     # in-memory (peft / optimized too)
    slipstream.export("path/to/hf-checkpoint", "out.gguf", quant="q8_0")    # read lazily from safetensors
    slipstream.export(model, "out_dir", format="vllm", quant="w4a16", lora="adapter", tokenizer=tok)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = ("gguf", "vllm")
_GGUF_DEFAULT = "f16"


def export(model: Any, path: str | Path, format: str = "gguf", quant: str | None = None, *, tokenizer: Any = None,
           chat_template: str | None = None, threads: int = 0, progress: bool = True,
           modelfile: bool = False, lora: str = "merge", shard_size: int | str = "5GB", overwrite: bool = False,
           verify: bool = False, dtype: Any = None, max_lora_rank: int = 16) -> Path:
    """Write `model` (an nn.Module or a checkpoint directory) to `path`; returns the path written.

    format="gguf": one file; `quant` is a GGUF type mix (default f16). LoRA adapters are merged and quantized bases
    dequantized first (slipstream.merge_lora). `modelfile=True` also writes an Ollama `Modelfile` next to it.

    format="vllm": a checkpoint directory (docs/vllm.md). `quant`: None (dense), "w4a16", "w4a16_asym", "w8a16",
    "w8a8" or "fp8" (compressed-tensors; weights our quantize-weights pass already packed in a matching format are
    written as they are). `lora`: "merge" (into the weights) or "adapter" (a peft adapter dir at `path/adapter`,
    checked against vLLM's limits, `max_lora_rank` included). `shard_size`: bytes or "2GB"-style. `overwrite`:
    replace an existing directory. `verify`: reload with transformers and record the max logit difference in the
    README model card. `dtype`: the checkpoint dtype (default: the model's).

    Nothing is left at `path` if anything fails (an existing target is kept as it was).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; available: {', '.join(FORMATS)}")
    if format == "vllm":
        if threads or modelfile:
            raise ValueError("threads= and modelfile= are GGUF options; the vLLM exporter takes neither")
        from slipstream.backends.vllm.export import export_vllm
        return export_vllm(model, path, quant, lora=lora, tokenizer=tokenizer, chat_template=chat_template,
                           shard_size=shard_size, overwrite=overwrite, verify=verify, dtype=dtype,
                           max_lora_rank=max_lora_rank, progress=progress)
    vllm_only = {"lora": lora != "merge", "shard_size": shard_size != "5GB", "overwrite": overwrite,
                 "verify": verify, "dtype": dtype is not None, "max_lora_rank": max_lora_rank != 16}
    if any(vllm_only.values()):
        raise ValueError(f"{', '.join(k for k, v in vllm_only.items() if v)}: vLLM export options; GGUF files merge "
                         "LoRA and take their type from quant=")
    return _export_gguf(model, Path(path), quant or _GGUF_DEFAULT, tokenizer, chat_template, threads, progress,
                        modelfile)


def _export_gguf(model: Any, path: Path, quant: str, tokenizer: Any, chat_template: str | None, threads: int,
                 progress: bool, modelfile: bool) -> Path:
    from slipstream.backends.gguf import QUANTS
    from slipstream.backends.gguf.arch import ExportError, resolve
    from slipstream.backends.gguf.config_json import read_config
    from slipstream.backends.gguf.tokenizer import tokenizer_metadata
    from slipstream.backends.gguf.writer import write
    from slipstream.backends.source import CheckpointSource, ModelSource

    if quant not in QUANTS:
        raise ValueError(f"unknown GGUF quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give the .gguf file path to write")
    if not path.parent.is_dir():
        raise ExportError(f"{path.parent} does not exist; create it first")
    from_disk = isinstance(model, (str, Path))
    source = CheckpointSource(model) if from_disk else ModelSource(model)
    arch = resolve(read_config(source.path / "config.json") if from_disk else source.config)
    if tokenizer is None:
        if not from_disk:
            raise ExportError("GGUF files carry the tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...)")
        tokenizer = _checkpoint_tokenizer(source)
    meta = tokenizer_metadata(tokenizer, chat_template, vocab_size=int(arch.config.vocab_size))
    written = write(path, source, arch, quant, meta, _provenance(model, from_disk), threads, progress)
    if modelfile:
        _write_modelfile(written)
    return written


def _checkpoint_tokenizer(source):
    """The checkpoint's tokenizer from its files when they say everything (fast), else through AutoTokenizer."""
    from slipstream.backends.gguf.tokenizer_files import open_tokenizer_files

    tokenizer, _ = open_tokenizer_files(source.path)
    return tokenizer if tokenizer is not None else source.tokenizer()


def _provenance(model: Any, from_disk: bool) -> dict[str, str]:
    import slipstream

    meta = {"slipstream.version": slipstream.__version__}
    if not from_disk:
        from slipstream.backends.module import REPORT_ATTR
        report = getattr(model, REPORT_ATTR, None)
        if report is not None:
            meta["slipstream.pipeline"] = report.pipeline
    return meta


def _write_modelfile(gguf_path: Path) -> None:
    """Ollama reads the chat template and stop tokens from the GGUF metadata; the Modelfile only points at it."""
    import os
    import tempfile

    from slipstream.backends.permissions import as_if_created

    target = gguf_path.with_name("Modelfile")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".Modelfile.", suffix=".partial")
    with os.fdopen(fd, "w") as f:
        f.write(f"# written by slipstream; the chat template travels inside the GGUF file\nFROM ./{gguf_path.name}\n")
    as_if_created(tmp)
    os.replace(tmp, target)
