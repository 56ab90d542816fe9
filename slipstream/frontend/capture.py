"""Capture: units' forwards go through torch.compile with our own backend, which receives a torch-level FX graph
(shapes in meta, module provenance in nn_module_stack), runs the pass pipeline on it and returns the rewritten
graph to run under eager autograd. No Inductor is involved.

- One compiled entry per *group*: the layers of a stack share one code object, so a graph captured for layer 0
  serves every layer whose guards pass (parameters are graph inputs; the KV cache is handed over as the layer's
  own cache object, see layer_cache.py). Capture cost is per distinct layer structure, not per layer.
- Shapes: the first capture of an entry is static; a dimension seen to change (sequence, batch, cache length) is
  recaptured dynamic once, and that graph serves every later size (dynamo's automatic dynamic shapes, state kept
  per entry). Dimensions that never change (hidden size, heads) stay constants: about half the tracing cost of
  `dynamic=True`, which makes every input dimension symbolic.
- Calls carrying state we cannot hand over per layer (an unknown cache type) use a per-unit entry instead.
- Hitting dynamo's recompile budget raises instead of silently running unfused code.
- Calls of a variant already captured skip torch.compile's per-call wrapper (direct_call.py).
"""
from __future__ import annotations

import functools
import itertools
import re
import types
from typing import Callable

import torch
from torch import nn
from torch.fx import GraphModule

from ..context import CURRENT_UNIT
from ..gc_pause import gc_paused
from .direct_call import DirectEntries
from .layer_cache import stack_index_attrs, substitute

_ORIGINAL = "_slipstream_original_forward"
_ROOT = re.compile(r"^L\[[^\]]*\](?:\[\d+\])?(?:\.__self__)?")
_DICT_KEY = re.compile(r"(?:\._modules)?\[['\"]([^'\"]+)['\"]\]")

# Scoped to our captures (the user's own torch.compile is untouched): Python floats in a unit (norm eps, scales)
# become constants guarded on their value instead of 0-d tensor inputs built per call (as_tensor + .item(), ~10 us).
# Static first, then dynamic in the dimensions seen to change (set here so a user's global dynamo config does not
# turn it off: without automatic dynamic shapes every new sequence length would be a new capture).
_CAPTURE_CONFIG = {"specialize_float": True, "assume_static_by_default": True, "automatic_dynamic_shapes": True}
_ENTRY_IDS = itertools.count()

GraphHook = Callable[[str, GraphModule], Callable]  # (unit path, graph) -> the callable that runs it


def relative_path(source: str) -> str:
    """`L['module'].mlp._modules['act_fn']` -> `mlp.act_fn` (dynamo's source text of a submodule)."""
    path = _DICT_KEY.sub(lambda m: "." + m.group(1), _ROOT.sub("", source))
    return path.lstrip(".")


def annotate(gm: GraphModule, unit_path: str, roots: dict[str, str] | None = None) -> None:
    """Give every node `val` (its fake tensor) and `slipstream_path` (the full dotted module path). `roots`: where
    the traced frame's module locals sit inside the unit (see `local_module_paths`); by default the unit itself."""
    roots = roots or {}
    own = roots.get("L['self']", "")  # ops written in the frame's own code belong to its module
    for node in gm.graph.nodes:
        if "val" not in node.meta and "example_value" in node.meta:
            node.meta["val"] = node.meta["example_value"]
        stack = node.meta.get("nn_module_stack") or {}
        source = list(stack.values())[-1][0] if stack else ""
        root = _ROOT.match(source)
        prefix = roots.get(root.group(0).removesuffix(".__self__"), own) if root else own
        node.meta["slipstream_path"] = ".".join(p for p in (unit_path, prefix, relative_path(source)) if p)
        node.meta["slipstream_unit"] = unit_path


def input_source(node) -> str | None:
    """Dynamo's text for where a graph input comes from (`L['self']._modules['mlp']._parameters['w']`), or None.
    `Source.name` is a method in torch 2.9 and a property in newer releases: read both."""
    name = getattr(getattr(node.meta.get("grapharg"), "source", None), "name", None)
    name = name() if callable(name) else name
    return name if isinstance(name, str) else None


_ATTR = re.compile(r"\._(?:modules|parameters|buffers)\[['\"]([^'\"]+)['\"]\]|\.(\w+)")


def local_module_paths(gm: GraphModule, example_inputs: list, unit: nn.Module | None) -> dict[str, str]:
    """Where the traced frame's locals that hold modules sit inside the unit: {"L['self']": "block", ...}.
    Our entry frame traces the unit itself (all paths ""). After a graph break, dynamo traces the frames below it
    on their own: a submodule's forward (`L['self']` is that submodule), or a resume function (a module can sit in
    `L['___stack0']`), and node paths are relative to those locals. Each is placed by identity: a parameter the
    graph reads as `L[...].<path>` is `unit.<place>.<path>`."""
    if unit is None:
        return {}
    names = {id(p): name for name, p in unit.named_parameters()}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    roots: dict[str, str] = {}
    for node, value in zip(placeholders, example_inputs):
        source = input_source(node)
        root = _ROOT.match(source) if source else None
        if root is None or id(value) not in names:
            continue
        key = root.group(0).removesuffix(".__self__")
        rel = ".".join(a or b for a, b in _ATTR.findall(source[root.end():]))
        full = names[id(value)]
        if full == rel:
            roots.setdefault(key, "")
        elif full.endswith("." + rel):
            roots.setdefault(key, full[:-len(rel) - 1])
    return roots


def _compiled_entry(call: Callable, on_graph: GraphHook, units: dict[str, nn.Module] | None = None) -> DirectEntries:
    """torch.compile over a fresh copy of `entry` (dynamo keeps its cache per code object, and its record of which
    dimensions changed per code name and location: the copy's name is unique, so each entry starts static and one
    model's sizes never make another model's capture dynamic), called through
    DirectEntries so that calls matching a captured variant skip torch.compile's per-call wrapper. `units`: the
    modules the entry serves, by path (to place graphs of frames below the entry: `local_module_paths`)."""
    def entry(*args, **kwargs):
        return call(*args, **kwargs)
    code = entry.__code__.replace(co_name=f"slipstream_entry_{next(_ENTRY_IDS)}")
    fresh = types.FunctionType(code, entry.__globals__, "slipstream_entry", entry.__defaults__, entry.__closure__)

    def backend(gm: GraphModule, example_inputs):
        unit = CURRENT_UNIT.get()
        annotate(gm, unit, local_module_paths(gm, example_inputs, (units or {}).get(unit)))
        return on_graph(unit, gm)

    compiled = torch.compile(fresh, backend=backend, dynamic=None)

    def compile_or_run(*args, **kwargs):  # dynamo reads the config when it traces, inside this call
        with torch._dynamo.config.patch(_CAPTURE_CONFIG), gc_paused():  # tracing: ~1.3x faster (gc_pause.py)
            return compiled(*args, **kwargs)
    return DirectEntries(compile_or_run, fresh)


def install_group(units: list[tuple[str, nn.Module]], on_graph: GraphHook) -> None:
    """Install one shared entry for `units` (modules of one class, e.g. a layer stack) and a dispatcher on each."""
    modules = [m for _, m in units]
    for path, module in units:
        if hasattr(module, _ORIGINAL):
            raise RuntimeError(f"module '{path or type(module).__name__}' is already captured by slipstream; "
                               "call slipstream.restore(model) before optimizing it again")
    shareable = len({type(m) for m in modules}) == 1 and not any("forward" in m.__dict__ for m in modules)
    if not shareable:
        for unit in units:
            install_group([unit], on_graph)
        return
    shared = _compiled_entry(type(modules[0]).forward, on_graph, dict(units))
    view_cache = stack_index_attrs(modules)
    for index, (path, module) in enumerate(units):
        _install_dispatcher(path, module, index, shared, view_cache, on_graph)


def _install_dispatcher(path: str, module: nn.Module, index: int, shared: Callable, view_cache: bool,
                        on_graph: GraphHook) -> None:
    own: list[Callable] = []  # this unit's private entry, made on first need

    def forward(*args, **kwargs):
        token = CURRENT_UNIT.set(path)
        try:
            args, kwargs, stateful = substitute(args, kwargs, index, view_cache)
            if not stateful:
                return shared(module, *args, **kwargs)
            if not own:
                own.append(_compiled_entry(type(module).forward, on_graph, {path: module}))
            return own[0](module, *args, **kwargs)
        finally:
            CURRENT_UNIT.reset(token)

    functools.update_wrapper(forward, module.forward)
    forward.slipstream_entries = lambda: [shared, *own]  # type: ignore[attr-defined]
    setattr(module, _ORIGINAL, module.__dict__.get("forward"))
    module.forward = forward


def call_counts(model: nn.Module) -> dict[str, int]:
    """How the captured units' calls were served so far: `direct` (DirectEntries ran a captured variant) and
    `compiled` (through torch.compile: first calls of a variant, stances, tracing, graph breaks)."""
    entries = {id(e): e for m in model.modules() if hasattr(m, _ORIGINAL)
               for e in m.forward.slipstream_entries()}.values()
    return {"direct": sum(e.direct_calls for e in entries), "compiled": sum(e.compiled_calls for e in entries)}


def uninstall(module: nn.Module) -> bool:
    if not hasattr(module, _ORIGINAL):
        return False
    original = module.__dict__.pop(_ORIGINAL)
    del module.forward
    if original is not None:
        module.forward = original
    return True


def set_recompile_budget() -> None:
    """A group compiles one graph per variant (prefill/decode, train/eval, grad/no-grad, layer kinds such as
    sliding vs global attention); make the budget comfortable and fail loudly past it."""
    config = torch._dynamo.config
    for name, floor in (("recompile_limit", 64), ("accumulated_recompile_limit", 1024)):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), floor))
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True
