"""Capture: each unit's forward is handed to torch.compile with our own backend, which receives a torch-level FX
graph (shapes in meta, module provenance in nn_module_stack), runs the pass pipeline on it and returns the
rewritten graph to run under eager autograd. No Inductor is involved.

- dynamic=True: one graph serves every batch and sequence length (sizes 0/1 specialise once, e.g. decode).
- Every unit gets its own code object, so dynamo keeps a separate cache per unit and its recompile budget is not
  shared across layers; hitting that budget raises instead of silently running unfused code.
"""
from __future__ import annotations

import re
import types
from typing import Callable

import torch
from torch import nn
from torch.fx import GraphModule

_ORIGINAL = "_slipstream_original_forward"
_ROOT = re.compile(r"^L\[[^\]]*\](?:\.__self__)?")
_DICT_KEY = re.compile(r"(?:\._modules)?\[['\"]([^'\"]+)['\"]\]")

GraphHook = Callable[[str, GraphModule], None]


def _fresh_entry(forward: Callable) -> Callable:
    def entry(*args, **kwargs):
        return forward(*args, **kwargs)
    code = entry.__code__.replace()  # a distinct code object: dynamo's cache is per code object
    fn = types.FunctionType(code, entry.__globals__, "slipstream_unit", entry.__defaults__, entry.__closure__)
    fn.__wrapped__ = forward
    return fn


def relative_path(source: str) -> str:
    """`L['orig'].__self__.mlp._modules['act_fn']` -> `mlp.act_fn` (dynamo's source text of a submodule)."""
    path = _DICT_KEY.sub(lambda m: "." + m.group(1), _ROOT.sub("", source))
    return path.lstrip(".")


def annotate(gm: GraphModule, unit_path: str) -> None:
    """Give every node `val` (its fake tensor) and `slipstream_path` (the full dotted module path)."""
    for node in gm.graph.nodes:
        if "val" not in node.meta and "example_value" in node.meta:
            node.meta["val"] = node.meta["example_value"]
        stack = node.meta.get("nn_module_stack") or {}
        rel = relative_path(list(stack.values())[-1][0]) if stack else ""
        node.meta["slipstream_path"] = ".".join(p for p in (unit_path, rel) if p)


def install(unit_path: str, module: nn.Module, on_graph: GraphHook) -> None:
    if hasattr(module, _ORIGINAL):
        raise RuntimeError(f"module '{unit_path or type(module).__name__}' is already captured by slipstream; "
                           "call slipstream.restore(model) before optimizing it again")

    def backend(gm: GraphModule, example_inputs):
        annotate(gm, unit_path)
        on_graph(unit_path, gm)
        return gm.forward

    original = module.__dict__.get("forward")  # an instance-level forward someone else installed, if any
    setattr(module, _ORIGINAL, original)
    module.forward = torch.compile(_fresh_entry(module.forward), backend=backend, dynamic=True)


def uninstall(module: nn.Module) -> bool:
    if not hasattr(module, _ORIGINAL):
        return False
    original = module.__dict__.pop(_ORIGINAL)
    del module.forward
    if original is not None:
        module.forward = original
    return True


def set_recompile_budget(units: int) -> None:
    """Each unit compiles a handful of variants (prefill, decode, train/eval, grad/no-grad); make the per-code
    budget comfortable and the process-wide one large enough for every unit, and fail loudly past them."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 16)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 16 * units + 256)
    config.fail_on_recompile_limit_hit = True
