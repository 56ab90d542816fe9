"""Which parts of a model are captured as graphs ("units"), found by structure, never by class name.

A unit is the largest piece that still works with `generate()`: each layer of a stack of repeated layers (an
`nn.ModuleList` of modules of one class), plus the stack's siblings that hold parameters (final norm, scaled
embeddings). Built-in single-op modules (`nn.Embedding`, `nn.Linear`) are not units: nothing in them can be
fused. The KV-cache update stays inside a layer's Python, which dynamo replays as a side effect, so a rewritten
region never spans it. A model with no layer stack is one unit.
"""
from __future__ import annotations

from torch import nn


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _single_op(module: nn.Module) -> bool:
    """A built-in torch.nn leaf (Embedding, Linear, Identity, ...): its graph is one op that no pass rewrites,
    so capturing it would only add a compiled call's overhead to every call (e.g. per generated token)."""
    return type(module).__module__.startswith("torch.nn.") and next(module.children(), None) is None


def _capturable(module: nn.Module) -> bool:
    return _has_params(module) and not _single_op(module)


def _layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    stacks = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) == 1 and _capturable(module[0]):
            if not any(name.startswith(s + ".") for s, _ in stacks):
                stacks.append((name, module))
    return stacks


Unit = tuple[str, nn.Module]


def find_units(model: nn.Module) -> list[Unit]:
    """(dotted path, module) of every unit, in model order; paths are as in `model.named_modules()`."""
    return [u for group in find_unit_groups(model) for u in group]


def find_unit_groups(model: nn.Module) -> list[list[Unit]]:
    """Units grouped for sharing captured graphs: one group per layer stack, one per sibling."""
    stacks = _layer_stacks(model)
    if not stacks:
        return [[("", model)]]
    groups: list[list[Unit]] = []
    stack_ids = {id(s) for _, s in stacks}
    for stack_name, stack in stacks:
        groups.append([(f"{stack_name}.{i}", layer) for i, layer in enumerate(stack)])
        parent_name = stack_name.rpartition(".")[0]
        parent = model.get_submodule(parent_name)
        for child_name, child in parent.named_children():
            if id(child) in stack_ids or isinstance(child, (nn.ModuleList, nn.ModuleDict)) or not _capturable(child):
                continue
            if any(id(m) in stack_ids for m in child.modules()):
                continue  # it contains a layer stack itself: its parts are units already
            groups.append([(f"{parent_name}.{child_name}" if parent_name else child_name, child)])
    seen: set[int] = set()
    unique = [[(n, m) for n, m in g if not (id(m) in seen or seen.add(id(m)))] for g in groups]
    return [g for g in unique if g]
