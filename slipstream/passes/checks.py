"""Small reusable checks. Each returns None (fine) or a reason string that ends up in explain()."""
from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .ops import tensor_meta

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dtype_supported(value: Any, op: str) -> str | None:
    t = tensor_meta(value)
    if t is None:
        return f"input of slipstream::{op} has no recorded tensor metadata"
    if t.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        return f"dtype {str(t.dtype).removeprefix('torch.')} is not supported by slipstream::{op} (supported: {names})"
    return None


def scalar(value: Any) -> Any:
    """A scalar argument's value: the int itself, or the (possibly symbolic) value a scalar node computes."""
    if isinstance(value, Node):
        return value.meta.get("val", value.meta.get("example_value"))
    return value


def same_size(a: Any, b: Any) -> bool:
    """Size equality that adds no guards: symbolic sizes must be provably equal."""
    a, b = scalar(a), scalar(b)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a is None or b is None:
        return False
    try:
        return bool(statically_known_true(a == b))
    except Exception:  # mismatched shape environments: fall back to the printed expressions
        return str(a) == str(b)


def same_shape(a: Any, b: Any) -> bool:
    ta, tb = tensor_meta(a), tensor_meta(b)
    if ta is None or tb is None or ta.dim() != tb.dim():
        return False
    return all(same_size(x, y) for x, y in zip(ta.shape, tb.shape))


def is_leaf_tensor(value: Any) -> bool:
    """A graph input or attribute (a parameter or buffer), not something computed in the graph."""
    return isinstance(value, Node) and value.op in ("placeholder", "get_attr")


def first_reason(*reasons: str | None) -> str | None:
    return next((r for r in reasons if r), None)
