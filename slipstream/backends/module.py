"""The `module` backend: the user's own model, with each unit's forward captured and rewritten in place.

Same object, same forward signature and outputs, same state_dict keys and Parameter objects, so `generate()`,
`save_pretrained()`, peft, HF Trainer and gradient checkpointing keep working. `restore()` undoes it.
"""
from __future__ import annotations

import threading

import torch
from torch import nn
from torch.fx import GraphModule

from .. import kernels  # noqa: F401  (registers the slipstream:: ops the rewritten graphs call)
from ..context import BISECT_PROBE, CURRENT_UNIT, DECISIONS
from ..debug.options import DebugOptions
from ..debug.report import Report
from ..debug.trace import GraphTrace
from ..debug.verify import check_graph
from ..frontend import capture
from ..frontend.units import find_unit_groups
from ..passes import PassManager, Pipeline
from . import twins

REPORT_ATTR = "_slipstream_report"


def attach(model: nn.Module, pipeline: Pipeline, version: str, debug: DebugOptions = DebugOptions()) -> Report:
    manager, lock = PassManager(pipeline), threading.Lock()
    module_results = manager.run_modules(model)  # before capture: they change what the graphs' inputs are
    groups = find_unit_groups(model)
    report = Report(pipeline=str(pipeline), version=version, debug=debug, units=[u for g in groups for u, _ in g],
                    pass_names=[p.name for p in manager.passes],
                    graph_pass_names=[p.name for p in manager.graph_passes],
                    summaries={p.name: p.summary for p in manager.passes})
    for stats, notes in module_results:
        report.record_module_pass(stats, notes)

    def on_graph(unit: str, gm: GraphModule):
        with lock:
            trace = GraphTrace(len(report.traces), unit, gm, debug.keep_original, bool(debug.dump_dir))
            graph_id = report.record(unit, manager.run(gm, trace), trace)
        forward, log, unchecked = twins.choose(gm), report.decision_log, [debug.verify]

        def run(*args):
            report.ran(CURRENT_UNIT.get(), graph_id)
            if unchecked[0]:  # the numeric check runs once per graph, on the inputs of its first call
                unchecked[0] = False
                report.checks.extend(check_graph(trace, args))
            probe = BISECT_PROBE.get()
            token = DECISIONS.set(log)
            try:
                return (forward if probe is None else probe.forward(trace, manager))(*args)
            finally:
                DECISIONS.reset(token)
        return run

    capture.set_recompile_budget()
    for group in groups:
        capture.install_group(group, on_graph)
    object.__setattr__(model, REPORT_ATTR, report)
    return report


def detach(model: nn.Module) -> int:
    restored = sum(capture.uninstall(m) for m in model.modules())
    if REPORT_ATTR in model.__dict__:
        object.__delattr__(model, REPORT_ATTR)
    return restored


def report_of(model: nn.Module) -> Report:
    report = getattr(model, REPORT_ATTR, None)
    if report is None:
        for m in model.modules():  # a wrapper around an optimized model (e.g. DDP) still explains
            report = m.__dict__.get(REPORT_ATTR)
            if report is not None:
                break
    if report is None:
        raise ValueError(f"{type(model).__name__} was not optimized by slipstream; call slipstream.optimize(model)")
    return report


def warm_up(model: nn.Module, example_inputs: dict | None) -> None:
    """One forward so graphs are captured (and errors surface) inside optimize(), not at the first real call.
    RNG state is preserved: warming up must not shift the user's dropout masks or sampling."""
    if example_inputs is None:
        example_inputs = default_inputs(model)
        if example_inputs is None:
            return
    was_training = model.training
    model.eval()  # inference variant: no dropout, no gradient checkpointing under no_grad
    try:
        with torch.random.fork_rng(), torch.no_grad():
            model(**example_inputs)
    finally:
        model.train(was_training)


def default_inputs(model: nn.Module) -> dict | None:
    """A small batch of token ids (models with `config.vocab_size`), the same on every call; else None."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        return None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (2, 8), generator=gen).to(device), "use_cache": False}
