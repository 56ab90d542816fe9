"""One layer's view of a Hugging Face KV cache, so one captured graph serves every layer of a stack.

A decoder layer calls `cache.update(k, v, self.layer_idx, ...)`; traced as is, dynamo guards on `layer_idx` and
captures one graph per layer. The view hands the layer its own cache-layer object instead, resolved outside the
graph, and ignores the index: the traced code no longer depends on which layer runs it.

Used only where that is provably the same thing: the cache's `update` is the base class's (no offloading, no
override), and the layer's index attribute equals its position in the stack (checked by `stack_index_attrs`).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn


class LayerCacheView:
    def __init__(self, cache: Any, index: int):
        if cache.layer_class_to_replicate is not None:  # what Cache.update does before indexing
            while len(cache.layers) <= index:
                cache.layers.append(cache.layer_class_to_replicate())
        self.layer = cache.layers[index]

    def update(self, key_states, value_states, layer_idx=None, cache_kwargs=None):
        return self.layer.update(key_states, value_states, cache_kwargs)


@functools.cache
def _cache_base() -> type:
    from transformers.cache_utils import Cache  # imported once, on the first layer call, not on every one
    return Cache


def viewable(cache: Any) -> bool:
    base = _cache_base()
    return (isinstance(cache, base) and type(cache).update is base.update and not getattr(cache, "offloading", True)
            and hasattr(cache, "layers"))


def stack_index_attrs(stack: list[nn.Module]) -> bool:
    """True if the layers carry an int attribute equal to their stack position (HF's `layer_idx`), found by value,
    not by name: then the cache index each layer uses is its position and the view is exact."""
    if len(stack) < 2:
        return True
    found = False
    for name, sub in stack[0].named_modules():
        for attr, value in vars(sub).items():
            if type(value) is not int or value != 0:
                continue
            others = [getattr(layer.get_submodule(name), attr, None) for layer in stack]
            if others == list(range(len(stack))):
                found = True
            elif any(isinstance(o, int) and o != 0 for o in others) and attr.endswith("idx"):
                return False  # an index-like attribute that is not the position: do not guess
    return found


def substitute(args: tuple, kwargs: dict, index: int, view: bool) -> tuple[tuple, dict, bool]:
    """With `view`, replace a viewable cache argument by its layer view; returns (args, kwargs, stateful), where
    stateful means an argument remains that is not plain data (tensors, numbers, strings, containers of them).
    Runs on every layer call, so the common arguments (tensors, numbers, None) pass an exact-type check only."""
    stateful = False

    def swap(value: Any) -> Any:
        nonlocal stateful
        if _plain(value):
            return value
        if view and viewable(value):
            return LayerCacheView(value, index)
        stateful = True
        return value

    if not all(type(a) in _ATOMS for a in args):
        args = tuple(a if type(a) in _ATOMS else swap(a) for a in args)
    return args, {k: v if type(v) in _ATOMS else swap(v) for k, v in kwargs.items()}, stateful


_ATOMS = frozenset({type(None), bool, int, float, str, torch.Tensor, nn.Parameter, torch.dtype, torch.device})


def _plain(value: Any) -> bool:
    if type(value) in _ATOMS or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return False
