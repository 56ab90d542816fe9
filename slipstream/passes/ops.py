"""Canonical views of FX nodes, so one pattern matches dynamo graphs (torch functions, Tensor methods, Python
operators) and torch.export graphs (ATen overloads) alike.

`view(node)` answers "what op is this, on which inputs, with which parameters", e.g. `x.pow(2)`,
`torch.pow(x, 2)`, `x ** 2` and `aten.pow.Tensor_Scalar(x, 2)` all read as `OpView("pow", (x,), {"exponent": 2})`.
Only public torch APIs are used (torch.fx, torch.ops); nothing from torch._inductor.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.fx import Node

aten = torch.ops.aten


@dataclass(frozen=True)
class OpView:
    name: str
    inputs: tuple
    params: dict = field(default_factory=dict)


def tensor_meta(value: Any) -> torch.Tensor | None:
    """The fake tensor recorded for a node (dynamo: example_value, export: val), or None."""
    if isinstance(value, Node):
        val = value.meta.get("val", value.meta.get("example_value"))
        return val if isinstance(val, torch.Tensor) else None
    return None


def _ndim(node: Any) -> int | None:
    t = tensor_meta(node)
    return t.dim() if t is not None else None


def _neg_dim(dim: int, ndim: int | None) -> int:
    return dim - ndim if (ndim is not None and dim >= 0) else dim


def _arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _dims(dim: Any, ndim: int | None) -> tuple | None:
    if dim is None:
        return None
    dims = dim if isinstance(dim, (list, tuple)) else (dim,)
    return tuple(_neg_dim(int(d), ndim) for d in dims)


# ---- per-op readers: node -> (inputs, params) ------------------------------------------------------------

def _binary(node: Node):
    if "alpha" in node.kwargs or len(node.args) > 2:
        return None  # add(a, b, alpha=...) is not a plain add
    return (_arg(node, 0, "input"), _arg(node, 1, "other")), {}


def _unary(node: Node):
    return (node.args[0],), {}


def _pow(node: Node):
    return (node.args[0],), {"exponent": _arg(node, 1, "exponent")}


def _square(node: Node):
    return (node.args[0],), {"exponent": 2}


def _mean(node: Node):
    x = node.args[0]
    return (x,), {"dim": _dims(_arg(node, 1, "dim"), _ndim(x)), "keepdim": bool(_arg(node, 2, "keepdim", False))}


def _cast(node: Node):
    return (node.args[0],), {"dtype": getattr(tensor_meta(node), "dtype", None)}


def _gelu(node: Node):
    return (node.args[0],), {"approximate": _arg(node, 1, "approximate", "none")}


def _cat(node: Node):
    tensors = _arg(node, 0, "tensors")
    first = tensors[0] if tensors else None
    return tuple(tensors), {"dim": _neg_dim(int(_arg(node, 1, "dim", 0)), _ndim(first))}


def _aten_slice(node: Node):
    x = node.args[0]
    dim = _neg_dim(int(_arg(node, 1, "dim", 0)), _ndim(x))
    return _slice_params(x, dim, _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1))


def _slice_params(x: Any, dim: int, start: Any, end: Any, step: Any):
    """`slice` params; a step other than 1 adds `step` (read as `strided_slice`, see `view`)."""
    if step not in (None, 1) and not (type(step) is int and step > 1):
        return None
    meta = tensor_meta(x)
    size = meta.shape[dim] if meta is not None else None
    start = 0 if start is None else start
    end = size if end is None or (size is not None and isinstance(end, int) and end > size) else end
    if size is not None and isinstance(start, int) and start < 0:
        start += size
    if size is not None and isinstance(end, int) and end < 0:
        end += size
    params = {"dim": dim, "start": start, "end": end}
    return (x,), params if step in (None, 1) else {**params, "step": step}


def _getitem(node: Node):
    """`x[..., a:b]` (a slice of one dim) reads as `slice`; `pair[i]` (an element of a tuple) as `getitem`."""
    x, idx = node.args[0], node.args[1]
    if isinstance(idx, int):
        return (x,), {"index": idx}
    ndim = _ndim(x)
    if ndim is None:
        return None
    idx = idx if isinstance(idx, tuple) else (idx,)
    if idx.count(None) == 1 and all(i is None or i == slice(None) for i in idx) and len(idx) == ndim + 1:
        return (x,), {"unsqueeze": _neg_dim(idx.index(None), ndim + 1)}
    if idx and idx[0] is Ellipsis and len(idx) == 2 and isinstance(idx[1], slice):
        s = idx[1]
        return _slice_params(x, -1, s.start, s.stop, s.step)
    sliced = [(d, s) for d, s in enumerate(idx) if not (isinstance(s, slice) and s == slice(None))]
    if len(sliced) == 1 and isinstance(sliced[0][1], slice) and Ellipsis not in idx:
        d, s = sliced[0]
        return _slice_params(x, _neg_dim(d, ndim), s.start, s.stop, s.step)
    return None


def _unsqueeze(node: Node):
    x = node.args[0]
    nd = _ndim(node)
    return (x,), {"dim": _neg_dim(int(_arg(node, 1, "dim")), nd)}


def _stack(node: Node):
    tensors = _arg(node, 0, "tensors")
    ndim = _ndim(tensors[0]) if tensors else None
    return tuple(tensors), {"dim": _neg_dim(int(_arg(node, 1, "dim", 0)), None if ndim is None else ndim + 1)}


def _flatten(node: Node):
    x, nd = node.args[0], _ndim(node.args[0])
    start, end = int(_arg(node, 1, "start_dim", 0)), int(_arg(node, 2, "end_dim", -1))
    return (x,), {"start_dim": _neg_dim(start, nd), "end_dim": _neg_dim(end, nd)}


def _chunk(node: Node):
    x = node.args[0]
    return (x,), {"chunks": _arg(node, 1, "chunks"), "dim": _neg_dim(int(_arg(node, 2, "dim", 0)), _ndim(x))}


def _sizes(node: Node):
    sizes = node.args[1:] if len(node.args) > 2 or not isinstance(_arg(node, 1, "size"), (list, tuple)) \
        else _arg(node, 1, "size")
    return (node.args[0],), {"sizes": tuple(sizes)}


def _transpose(node: Node):
    x = node.args[0]
    nd = _ndim(x)
    dims = sorted(_neg_dim(int(d), nd) for d in (_arg(node, 1, "dim0"), _arg(node, 2, "dim1")))
    return (x,), {"dims": tuple(dims)}


def _softmax(node: Node):
    x = node.args[0]
    return (x,), {"dim": _neg_dim(int(_arg(node, 1, "dim")), _ndim(x)), "dtype": getattr(tensor_meta(node), "dtype",
                                                                                          None)}


def _dropout(node: Node):
    return (node.args[0],), {"p": _arg(node, 1, "p", 0.5), "training": _arg(node, 2, "training", True)}


def _sdpa(node: Node):
    q, k, v = (_arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
    names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = (None, 0.0, False, None, False)
    params = {n: _arg(node, 3 + i, n, d) for i, (n, d) in enumerate(zip(names, defaults))}
    return (q, k, v), params


def _linear(node: Node):
    return (_arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias")), {}


_QUANT_ARGS = ("x", "packed", "scales", "aux", "fmt", "group", "out_features", "bias")


def _quant_linear(node: Node):
    """slipstream::quant_linear(x, packed, scales, aux, fmt, group, out_features, bias): tensors as inputs."""
    a = {n: _arg(node, i, n) for i, n in enumerate(_QUANT_ARGS)}
    return (a["x"], a["packed"], a["scales"], a["aux"], a["bias"]), {
        "fmt": a["fmt"], "group": a["group"], "out_features": a["out_features"]}


def _lora_linear(node: Node):
    """slipstream::lora_linear(x, base, scales, aux, fmt, group, out_features, bias, xs, a, b, scalings)."""
    names = _QUANT_ARGS[:1] + ("base",) + _QUANT_ARGS[2:] + ("xs", "a", "b", "scalings")
    a = {n: _arg(node, i, n) for i, n in enumerate(names)}
    return (a["x"], a["base"], a["scales"], a["aux"], a["bias"]), {
        "fmt": a["fmt"], "group": a["group"], "out_features": a["out_features"], "xs": a["xs"], "a": a["a"],
        "b": a["b"], "scalings": a["scalings"]}


# ---- the table: canonical name -> reader, and the targets that mean it -------------------------------------

_Reader = Callable[[Node], Any]
_FUNCTIONS: dict[Any, tuple[str, _Reader]] = {}
_METHODS: dict[str, tuple[str, _Reader]] = {}


def _register(name: str, reader: _Reader, functions=(), methods=()):
    for fn in functions:
        _FUNCTIONS[fn] = (name, reader)
    for m in methods:
        _METHODS[m] = (name, reader)


for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("div", operator.truediv)):
    _register(_name, _binary, (_op, getattr(torch, _name), getattr(aten, _name).Tensor,
                               getattr(aten, _name).Scalar), (_name, f"__{_name}__"))
_register("div", _binary, (torch.true_divide,), ("true_divide", "__truediv__"))
for _name in ("rsqrt", "neg", "sigmoid", "tanh", "sqrt", "exp"):
    _register(_name, _unary, (getattr(torch, _name), getattr(aten, _name).default), (_name,))
_register("neg", _unary, (operator.neg,), ("__neg__",))
_register("clone", _unary, (torch.clone, aten.clone.default), ("clone",))
_register("silu", _unary, (F.silu, aten.silu.default), ())
_register("gelu", _gelu, (F.gelu, aten.gelu.default), ())
_register("pow", _pow, (torch.pow, operator.pow, aten.pow.Tensor_Scalar), ("pow", "__pow__"))
_register("pow", _square, (torch.square,), ("square",))
_register("mean", _mean, (torch.mean, aten.mean.dim), ("mean",))
_register("cast", _cast, (aten._to_copy.default, aten.to.dtype, aten.type_as.default), ("to", "float", "half", "bfloat16", "type_as", "type"))
_register("cat", _cat, (torch.cat, torch.concat, aten.cat.default), ())
_register("stack", _stack, (torch.stack, aten.stack.default), ())
_register("flatten", _flatten, (torch.flatten,), ("flatten",))
_register("slice", _aten_slice, (aten.slice.Tensor,), ())
_register("slice", _getitem, (operator.getitem,), ())
_register("unsqueeze", _unsqueeze, (torch.unsqueeze, aten.unsqueeze.default), ("unsqueeze",))
_register("chunk", _chunk, (torch.chunk,), ("chunk",))
_register("linear", _linear, (F.linear, torch._C._nn.linear, aten.linear.default), ())
_register("matmul", _binary, (torch.matmul, operator.matmul, aten.matmul.default), ("matmul", "__matmul__"))
_register("transpose", _transpose, (torch.transpose, aten.transpose.int), ("transpose",))
_register("expand", _sizes, (aten.expand.default,), ("expand",))
_register("reshape", _sizes, (torch.reshape, aten.reshape.default, aten.view.default), ("reshape", "view"))
_register("softmax", _softmax, (F.softmax, torch.softmax, aten._softmax.default, aten.softmax.int), ("softmax",))
_register("dropout", _dropout, (F.dropout, aten.dropout.default), ())
_register("sdpa", _sdpa, (F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default), ())


def _register_slipstream_ops() -> None:
    """Our own ops read like the others (a graph can hold them: QuantLinear modules call quant_linear)."""
    import slipstream.kernels  # noqa: F401  registers torch.ops.slipstream.*
    from slipstream.kernels import lora_linear  # noqa: F401

    ops = torch.ops.slipstream
    _register("quant_linear", _quant_linear, (ops.quant_linear, ops.quant_linear.default), ())
    _register("lora_linear", _lora_linear, (ops.lora_linear, ops.lora_linear.default), ())


_register_slipstream_ops()


def view(node: Any) -> OpView | None:
    """The canonical reading of `node`, or None for placeholders, literals and ops we have no name for."""
    if not isinstance(node, Node):
        return None
    if node.op == "call_function":
        entry = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        entry = _METHODS.get(node.target)
    else:
        return None
    if entry is None:
        return None
    name, reader = entry
    read = reader(node)
    if read is None:
        return None
    inputs, params = read
    if name == "slice" and "index" in params:
        name = "getitem"
    elif name == "slice" and "step" in params:  # x[..., 1::2]: never read as a plain slice
        name = "strided_slice"
    elif name == "slice" and "unsqueeze" in params:
        name, params = "unsqueeze", {"dim": params["unsqueeze"]}
    return OpView(name, inputs, params)


def module_path(node: Node) -> str:
    """The dotted path of the innermost module that created `node` ('' at the top level)."""
    return node.meta.get("slipstream_path", "")


def site_path(node: Node) -> str:
    """`node`'s module path relative to the unit whose graph holds it: one graph serves many units (layers), so
    run-time decisions name the site relative to the unit that ran it."""
    path, unit = module_path(node), node.meta.get("slipstream_unit", "")
    return path[len(unit) + 1:] if unit and path.startswith(unit + ".") else ("" if path == unit else path)


# Reading and computing sizes in a captured graph (`x.size()[-1] // 2`): pure, so erasing it when nothing reads it
# changes nothing
_SIZE_ARITHMETIC = frozenset({operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
                              operator.mod, operator.neg, operator.pow, operator.getitem})


def is_size_computation(node: Node) -> bool:
    """`x.size()`, an element of it, or arithmetic on sizes: pure reads of metadata."""
    if node.op == "call_method":
        return node.target == "size"
    if node.op != "call_function" or node.target not in _SIZE_ARITHMETIC:
        return False
    if node.target is operator.getitem:  # an element of a size tuple, not a tensor read
        return isinstance(node.args[0], Node) and node.args[0].op == "call_method" and node.args[0].target == "size"
    value = node.meta.get("val", node.meta.get("example_value"))
    return isinstance(value, (int, float, torch.SymInt, torch.SymFloat))  # `a + b` on sizes, not on tensors
