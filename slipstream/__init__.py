"""slipstream: a graph-rewriting optimizer for transformer models.

    opt = slipstream.optimize(model)                 # capture, fuse, run on canonical ops
    print(slipstream.explain(opt))                   # what was fused, where, what was refused and why
"""
from __future__ import annotations

from typing import Any

from torch import nn

__version__ = "0.1.0"

BACKENDS = ("module",)


def optimize(model: nn.Module, pipeline: str = "default", backend: str = "module", *,
             example_inputs: dict[str, Any] | None = None, warmup: bool = True) -> nn.Module:
    """Rewrite `model` in place with the pass `pipeline` (canonical text or a preset name) and return it.

    backend="module": the same model object, trainable and generate()-ready, its units captured as graphs and
    rewritten to call slipstream's fused ops. `warmup` runs one forward on `example_inputs` (default: a small
    batch of token ids for models with `config.vocab_size`) so the report is complete when this returns.
    """
    from .backends import module as module_backend
    from .passes import Pipeline

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"slipstream.optimize expects a torch.nn.Module, got {type(model).__name__}")
    parsed = Pipeline.parse(pipeline)
    module_backend.attach(model, parsed, __version__)
    if warmup:
        try:
            module_backend.warm_up(model, example_inputs)
        except Exception:
            module_backend.detach(model)
            raise
    return model


def report(model: nn.Module):
    """The structured report (slipstream.debug.report.Report) of an optimized model."""
    from .backends.module import report_of
    return report_of(model)


def explain(model: nn.Module) -> str:
    """A readable per-pass report: fused sites with module paths, refusals with reasons, time."""
    return str(report(model))


def merge_lora(model: nn.Module, dtype=None) -> dict:
    """Dense state dict with LoRA adapters folded in and quantized weights dequantized, under the plain model's
    key names (what the exporters write). See slipstream.merge."""
    from .merge import merge_lora as merge
    return merge(model, dtype)


def export(model: Any, path: Any, format: str = "gguf", quant: str | None = None, **options: Any):
    """Write `model` (nn.Module or checkpoint directory) as a GGUF file or a vLLM checkpoint directory; see
    slipstream.backends.exporter.export, docs/gguf.md and docs/vllm.md."""
    from .backends.exporter import export as write
    return write(model, path, format, quant, **options)


def restore(model: nn.Module) -> nn.Module:
    """Undo optimize(): every unit runs its original forward again."""
    from .backends.module import detach
    detach(model)
    return model


__all__ = ["optimize", "explain", "report", "restore", "merge_lora", "export", "__version__"]
