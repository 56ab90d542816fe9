"""slipstream.export (backends/exporter.py): write a model as a GGUF file for llama.cpp (vLLM checkpoints: a later backend).

    slipstream.export(model, "out.gguf", quant="q4_k_m", tokenizer=tok)     # in-memory (peft / optimized too)
    slipstream.export("path/to/hf-checkpoint", "out.gguf", quant="q8_0")    # read lazily from safetensors
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = ("gguf",)


def export(model: Any, path: str | Path, format: str = "gguf", quant: str = "f16", *, tokenizer: Any = None,
           chat_template: str | None = None, threads: int = 0, progress: bool = True,
           modelfile: bool = False) -> Path:
    """Write `model` (an nn.Module or a checkpoint directory) to `path`; returns the path written.

    LoRA adapters are merged and quantized bases dequantized first (slipstream.merge_lora). Nothing is left at
    `path` if anything fails. `modelfile=True` also writes an Ollama `Modelfile` next to the GGUF file.
    """
    from slipstream.backends.gguf import QUANTS
    from slipstream.backends.gguf.arch import ExportError, resolve
    from slipstream.backends.gguf.source import CheckpointSource, ModelSource
    from slipstream.backends.gguf.tokenizer import tokenizer_metadata
    from slipstream.backends.gguf.writer import write

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; available: {', '.join(FORMATS)}")
    if quant not in QUANTS:
        raise ValueError(f"unknown GGUF quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give the .gguf file path to write")
    if not path.parent.is_dir():
        raise ExportError(f"{path.parent} does not exist; create it first")
    from_disk = isinstance(model, (str, Path))
    source = CheckpointSource(model) if from_disk else ModelSource(model)
    arch = resolve(source.config)
    if tokenizer is None:
        if not from_disk:
            raise ExportError("GGUF files carry the tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...)")
        tokenizer = source.tokenizer()
    meta = tokenizer_metadata(tokenizer, chat_template, vocab_size=int(arch.config.vocab_size))
    written = write(path, source, arch, quant, meta, _provenance(model, from_disk), threads, progress)
    if modelfile:
        _write_modelfile(written)
    return written


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

    target = gguf_path.with_name("Modelfile")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".Modelfile.", suffix=".partial")
    with os.fdopen(fd, "w") as f:
        f.write(f"# written by slipstream; the chat template travels inside the GGUF file\nFROM ./{gguf_path.name}\n")
    os.replace(tmp, target)
