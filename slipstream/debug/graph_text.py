"""One line of text per FX node, stable across runs: the graph diff's alphabet.

dynamo's node names come from the model's variable names and its symbolic sizes from hashes of their sources
(`s81`), so neither is something a golden file should depend on. A `Namer` gives each node a stable name once:
graph inputs by what they are (`%input_layernorm.weight`, `%arg1`), computed nodes by position (`%7`), nodes
that passes create by order of appearance (`%83`, ...); symbolic sizes become `s0, s1, ...` in order of first
appearance among the inputs.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch.fx import Graph, Node

from ..frontend.capture import input_source

_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
           torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "bool"}
_SYMBOL = re.compile(r"\b[su]\d+\b")
_SELF = re.compile(r"^L\['args'\]\[0\]|^L\['self'\]")
_ARG = re.compile(r"^L\['args'\]\[(\d+)\]")
_KWARG = re.compile(r"^L\['kwargs'\]\['([^']+)'\]")
_ATTR = re.compile(r"\._(?:modules|parameters|buffers)\['([^']+)'\]")


def input_name(node: Node) -> str:
    """A graph input's name from what dynamo says it is: `L['args'][0]._modules['mlp']._parameters['w']` -> `mlp.w`."""
    source = input_source(node)
    if source is None:
        return node.name
    text = _SELF.sub("self", source)
    text = _ARG.sub(lambda m: f"arg{m.group(1)}", text)
    text = _KWARG.sub(lambda m: m.group(1), text)
    text = _ATTR.sub(lambda m: "." + m.group(1), text)
    text = text.removeprefix("self.").replace("'", "").replace('"', "")
    return text if text != "self" else "self"


class Namer:
    """Stable names for one graph's nodes; call `name()` on nodes as they appear, in graph order."""

    def __init__(self, graph: Graph):
        self.names: dict[Node, str] = {}
        self.symbols: dict[str, str] = {}
        self.sizes: set[Node] = set()  # size inputs: referred to by their symbol (dynamo picks their source
        self.counter = 0               # from the process's compile history, so the source is not stable)
        taken: set[str] = set()
        for node in graph.nodes:
            if node.op == "placeholder":
                for sym in _SYMBOL.findall(_raw_type(node)):
                    self.symbols.setdefault(sym, f"s{len(self.symbols)}")
                value = node.meta.get("val", node.meta.get("example_value"))
                if isinstance(value, torch.SymInt) and _SYMBOL.fullmatch(str(value)):
                    self.names[node] = self.symbols[str(value)]
                    self.sizes.add(node)
                    continue
                name = input_name(node)
                while name in taken:
                    name += "'"
                taken.add(name)
                self.names[node] = name
        self.extend(graph)

    def extend(self, graph: Graph) -> None:
        """Name the graph's not yet named nodes in graph order (the input graph, then each pass's new nodes)."""
        for node in graph.nodes:
            if node not in self.names:
                self.names[node] = str(self.counter) if node.op != "output" else "out"
                self.counter += node.op != "output"

    def add(self, node: Node) -> None:
        """Name a node that never made it into the graph's final form (created and erased within one pass)."""
        if node not in self.names:
            self.names[node] = str(self.counter)
            self.counter += 1

    def ref(self, node: Node) -> str:
        return self.names[node] if node in self.sizes else "%" + self.names.get(node, node.name)

    def type_of(self, node: Node) -> str:
        return _SYMBOL.sub(lambda m: self.symbols.setdefault(m.group(0), f"s{len(self.symbols)}"), _raw_type(node))

    def line(self, node: Node) -> str:
        """`%7 = mul(%5, %6) : f32[s0, s1, 64]`: op, arguments by stable name, literal values, type."""
        if node.op == "placeholder":
            return f"{self.ref(node)} = input : {self.type_of(node)}"
        if node.op == "output":
            return f"return {self.arg(node.args[0])}"
        kwargs = [f"{k}={self.arg(v)}" for k, v in node.kwargs.items()]
        args = ", ".join([self.arg(a) for a in node.args] + kwargs)
        return f"{self.ref(node)} = {op_name(node)}({args}) : {self.type_of(node)}"

    def arg(self, value: Any) -> str:
        if isinstance(value, Node):
            return self.ref(value)
        if isinstance(value, (list, tuple)):
            inner = ", ".join(self.arg(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
        if isinstance(value, slice):  # bounds can be nodes (`x[..., : d // 2]`)
            return f"slice({self.arg(value.start)}, {self.arg(value.stop)}, {self.arg(value.step)})"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {self.arg(v)}" for k, v in value.items()) + "}"
        if isinstance(value, torch.dtype):
            return str(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, str):
            return repr(value)
        return _SYMBOL.sub(lambda m: self.symbols.get(m.group(0), m.group(0)), str(value))


def op_name(node: Node) -> str:
    """`slipstream.rms_norm`, `linear`, `.to`, `getitem`: short and free of memory addresses."""
    target = node.target
    if node.op == "call_method":
        return "." + str(target)
    if node.op in ("call_module", "get_attr"):
        return f"{node.op}:{target}"
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}" + ("" if target._overloadname == "default"
                                                         else f".{target._overloadname}")
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"{target._qualified_op_name.replace('::', '.')}"
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if module.startswith("slipstream."):
        return f"{module.rsplit('.', 1)[-1]}.{name}"
    return name


def _raw_type(node: Node) -> str:
    return _type_text(node.meta.get("val", node.meta.get("example_value")))


def _type_text(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dims = ", ".join(str(d) for d in value.shape)
        return f"{_DTYPES.get(value.dtype, str(value.dtype).removeprefix('torch.'))}[{dims}]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_type_text(v) for v in value) + ")"
    if isinstance(value, (torch.SymInt, int)) and not isinstance(value, bool):
        return f"int{{{value}}}" if isinstance(value, torch.SymInt) else "int"
    if isinstance(value, (torch.SymFloat, float)):
        return "float"
    if value is None:
        return "-"
    return type(value).__name__
