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
             example_inputs: dict[str, Any] | None = None, warmup: bool = True, verify: bool = False,
             dump_dir: str | None = None, config: Any = None) -> nn.Module:
    """Rewrite `model` in place with the pass `pipeline` (canonical text or a preset name) and return it.

    backend="module": the same model object, trainable and generate()-ready, its units captured as graphs and
    rewritten to call slipstream's fused ops. `warmup` runs one forward on `example_inputs` (default: a small
    batch of token ids for models with `config.vocab_size`) so the report is complete when this returns.
    `verify=True` checks every rewrite numerically on its graph's first inputs (slipstream.diff shows the result);
    `dump_dir` writes graphs, region pictures, pipeline.txt and repro.py there (docs/debugging.md) once the
    warm-up ran; slipstream.dump(model, dir) writes it again later, with what has run since (generation).
    `config`: a TOML file (path) or slipstream.config.Config; it supplies pipeline, backend and debug settings.
    """
    from .backends import module as module_backend
    from .config import Config, load_config
    from .debug.options import DebugOptions
    from .passes import Pipeline

    if config is not None:
        cfg = config if isinstance(config, Config) else load_config(config)
        pipeline, backend, warmup, debug = str(cfg.pipeline), cfg.backend.name, cfg.backend.warmup, cfg.debug
        debug = DebugOptions(debug.print_after, debug.verify or verify, debug.bisect, dump_dir or debug.dump_dir)
    else:
        debug = DebugOptions(verify=verify, dump_dir=str(dump_dir or ""))
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"slipstream.optimize expects a torch.nn.Module, got {type(model).__name__}")
    parsed = Pipeline.parse(pipeline)
    report = module_backend.attach(model, parsed, __version__, debug)
    if warmup:
        try:
            module_backend.warm_up(model, example_inputs)
        except Exception:
            module_backend.detach(model)
            raise
    if debug.verify and any(not c.ok for c in report.checks):
        import warnings
        first = next(c for c in report.checks if not c.ok)
        warnings.warn(f"slipstream verify: first region out of tolerance: {first.line()}", stacklevel=2)
    if debug.dump_dir:
        if not warmup:
            import warnings
            warnings.warn(f"slipstream: dump_dir {str(debug.dump_dir)!r} without a warm-up holds no graph yet (units "
                          "are captured on their first call); call slipstream.dump(model, dir) after running the "
                          "model", stacklevel=2)
        dump(model, debug.dump_dir)
    return model


def dump(model: nn.Module, directory: Any) -> Any:
    """Write the dump directory of an optimized model now: graphs, diff, explain.txt (with the run-time decisions
    made so far, e.g. during generate()), slipstream.json, region pictures, repro.py. Returns its path."""
    from .debug.dump import write_dump
    return write_dump(model, directory)


def diff(model: nn.Module, print_after: str | None = None, times: bool = True) -> str:
    """The graph diff of an optimized model: per graph and pass, removed (-) and added (+) nodes with shapes,
    dtypes, rule and replaced nodes; matches and refusals; time (`times=False` for golden files);
    the numeric check's results when optimized with verify=True. print_after: change | all | none."""
    from .debug.diff import render_diff
    rep = report(model)
    return render_diff(rep, print_after or rep.debug.print_after, times)


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


__all__ = ["optimize", "explain", "diff", "report", "dump", "restore", "merge_lora", "export", "__version__"]
