"""Patterns as data, and the matcher that finds them.

A pattern is a small tree written close to the PyTorch a model author writes:

    x32 = Op("cast", X) | X                                  # `hidden.to(torch.float32)`, or nothing
    norm = Op("mul", x32, Op("rsqrt", Op("add", Op("mean", Op("pow", x32, exponent=2), dim=(-1,), keepdim=True),
                                              Lit("eps"))))

Leaves are `Var`s (any node or value; one name binds one thing everywhere it occurs) and `Lit`s (a captured
scalar: a Python number, or a symbolic scalar node such as dynamo's `eps.item()`). `Op` matches a node whose
canonical view (passes/ops.py) has that name, matching inputs and parameters; `add` and `mul` are tried in both
argument orders. Parameters are compared exactly unless given as a `Var`/`Lit`, which captures them.

Matching starts at a candidate root node and walks towards the inputs, so a failed attempt costs O(pattern),
and a pass costs O(graph) per rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.fx import Node

from .checks import same_size, scalar
from .ops import is_size_computation, tensor_meta, view

COMMUTATIVE = frozenset({"add", "mul"})


class Pattern:
    def __or__(self, other: "Pattern") -> "Alt":
        return Alt((self, other))


@dataclass(frozen=True, eq=False)
class Var(Pattern):
    name: str


@dataclass(frozen=True, eq=False)
class Lit(Pattern):
    """A captured scalar: a Python int/float, or a node computing a scalar (not a tensor)."""
    name: str


@dataclass(frozen=True, eq=False)
class Op(Pattern):
    name: str
    inputs: tuple
    params: dict
    tag: str | None = None      # binds the matched node under this name too
    boundary: bool = False      # may have users outside the match (kept alive then)

    def __init__(self, name: str, *inputs: Any, tag: str | None = None, boundary: bool = False, **params: Any):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "boundary", boundary)


@dataclass(frozen=True, eq=False)
class Alt(Pattern):
    options: tuple

    def __or__(self, other: Pattern) -> "Alt":
        return Alt(self.options + (other,))


@dataclass(frozen=True, eq=False)
class Recognizer(Pattern):
    """A shape no tree of `Op`s can say, such as in-place writes (the written tensor's *users* belong to it):
    `fn(node)` returns (bindings, nodes) with `node` as the top, or None."""
    fn: Callable[[Node], tuple[dict, list] | None]


@dataclass
class Match:
    """What a pattern bound: captures by name, the op nodes it covered, and which of those may be shared."""
    root: Node
    bindings: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    boundary: set = field(default_factory=set)

    def __getitem__(self, name: str) -> Any:
        return self.bindings[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.bindings.get(name, default)


@dataclass(frozen=True)
class NearMiss:
    """Where a pattern stopped fitting: `progress` op nodes in (matched, or entered on the way down), it wanted
    `expected` and found `found` (the value there: `node`, if a node)."""
    progress: int
    expected: str
    found: str
    node: Node | None = None
    commuted: bool = False  # met while retrying `add`/`mul` with swapped inputs (less telling than the order written)


_misses: list[NearMiss] | None = None  # collecting (near_miss) or not (match: the hot path pays one test)
_depth = 0  # pattern ops entered (their name matched) on the path to the current node, while collecting
_commuted = 0  # swapped-input retries on that path


def near_miss(pattern: Pattern, root: Node,
              rank: Callable[[NearMiss], Any] = lambda m: (m.progress, not m.commuted)) -> NearMiss | None:
    """Why `pattern` does not fit at `root`: of the failures its search met, the last ranked highest (by default
    the furthest in, in the input order written); None if it fits. The last, because of alternatives `a | b` the
    later ones are the fallbacks, which explain more when all stop at the same place."""
    global _misses
    _misses = []
    try:
        if _match(pattern, root, ({}, (), frozenset())) is not None:
            return None
        return max(reversed(_misses), key=rank, default=None)  # max keeps the first of equals: the last met
    finally:
        _misses = None


def _miss(state: _State, expected: str, value: Any, found: str | None = None) -> None:
    if _misses is not None:
        _misses.append(NearMiss(len(set(state[1])) + _depth, expected, describe(value) if found is None else found,
                                value if isinstance(value, Node) else None, _commuted > 0))


def describe(value: Any) -> str:
    """A node as a report names it (`'mul' node 'mul_3'`), or a constant's repr."""
    if isinstance(value, Node):
        v = view(value)
        return f"'{v.name}' node '{value.name}'" if v is not None else f"{value.op} '{value.name}'"
    return repr(value)


def match(pattern: Pattern, root: Node) -> Match | None:
    """Match `pattern` with its top at `root`; None if it does not fit."""
    state = _match(pattern, root, ({}, (), frozenset()))
    if state is None:
        return None
    bindings, nodes, boundary = state
    ordered = list(dict.fromkeys(nodes))
    return Match(root=root, bindings=dict(bindings), nodes=ordered, boundary=set(boundary))


_State = tuple  # (bindings: dict, nodes: tuple, boundary: frozenset) — treated as immutable while matching


def _bind(state: _State, name: str, value: Any) -> _State | None:
    bindings = state[0]
    if name in bindings:
        if _same(bindings[name], value):
            return state
        _miss(state, f"the node '{name}' is bound to ({describe(bindings[name])})", value)
        return None
    return ({**bindings, name: value}, state[1], state[2])


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Node) or isinstance(b, Node):
        # one size computed twice (dynamo does not merge two `x.size(-1) // 2`): the same if provably equal
        return _is_size(a) and _is_size(b) and same_size(a, b)
    return type(a) is type(b) and a == b


def _is_size(value: Any) -> bool:
    size = scalar(value)
    return isinstance(size, (torch.SymInt, int)) and not isinstance(size, bool)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if isinstance(value, Node):
        val = value.meta.get("val", value.meta.get("example_value"))
        return isinstance(val, (torch.SymFloat, torch.SymInt, int, float)) and not isinstance(val, bool)
    return False


def _match(pattern: Any, value: Any, state: _State) -> _State | None:
    if isinstance(pattern, Var):
        return _bind(state, pattern.name, value)
    if isinstance(pattern, Lit):
        if _is_scalar(value):
            return _bind(state, pattern.name, value)
        _miss(state, f"a scalar '{pattern.name}'", value)
        return None
    if isinstance(pattern, Alt):
        for option in pattern.options:
            found = _match(option, value, state)
            if found is not None:
                return found
        return None
    if isinstance(pattern, Op):
        return _match_op(pattern, value, state)
    if isinstance(pattern, Recognizer):
        return _recognize(pattern, value, state)
    if _same(pattern, value):  # a constant such as 2 or -1
        return state
    _miss(state, repr(pattern), value)
    return None


def _match_op(pattern: Op, value: Any, state: _State) -> _State | None:
    v = view(value)
    if v is None or v.name != pattern.name:
        _miss(state, f"'{pattern.name}'", value)
        return None
    if _misses is None:
        return _match_op_fitting(pattern, value, v, state)
    global _depth
    _depth += 1
    try:
        return _match_op_fitting(pattern, value, v, state)
    finally:
        _depth -= 1


def _match_op_fitting(pattern: Op, value: Any, v, state: _State) -> _State | None:
    """`value`'s view `v` has the pattern's op name: match its parameters and inputs."""
    for key, want in pattern.params.items():
        if key not in v.params or not isinstance(want, Pattern) and not _same(want, v.params[key]):
            has = f" with {key}={v.params[key]!r}" if key in v.params else f" without {key}"
            _miss(state, f"'{pattern.name}' with {key}={want!r}", value, describe(value) + has)
            return None
        state = _match(want, v.params[key], state)
        if state is None:
            return None
    orders = [v.inputs]
    if pattern.name in COMMUTATIVE and len(v.inputs) == 2:
        orders.append(v.inputs[::-1])
    for i, inputs in enumerate(orders):
        match_inputs = _match_inputs if i == 0 else _match_commuted
        found = match_inputs(pattern.inputs, inputs, state)
        if found is not None:
            bindings, nodes, boundary = found
            if pattern.tag:
                found = _bind(found, pattern.tag, value)
                if found is None:
                    continue
                bindings = found[0]
            return (bindings, nodes + (value,), boundary | {value} if pattern.boundary else boundary)
    return None


def _match_commuted(patterns: tuple, inputs: tuple, state: _State) -> _State | None:
    global _commuted
    _commuted += 1
    try:
        return _match_inputs(patterns, inputs, state)
    finally:
        _commuted -= 1


def _recognize(pattern: Recognizer, value: Any, state: _State) -> _State | None:
    found = pattern.fn(value) if isinstance(value, Node) else None
    if found is None:
        return None
    bindings, nodes = found
    for name, bound in bindings.items():
        state = _bind(state, name, bound)
        if state is None:
            return None
    return (state[0], state[1] + tuple(nodes), state[2])


def _match_inputs(patterns: tuple, inputs: tuple, state: _State) -> _State | None:
    if len(patterns) != len(inputs):
        _miss(state, f"{len(patterns)} inputs", None, f"{len(inputs)}")
        return None
    for p, x in zip(patterns, inputs):
        state = _match(p, x, state)
        if state is None:
            return None
    return state


def outside_users(m: Match) -> list[Node]:
    """Interior nodes of the match used by nodes outside it (boundary nodes are allowed to be)."""
    inside = set(m.nodes)
    leaked = []
    for n in m.nodes:
        if n is m.root or n in m.boundary:
            continue
        if any(u not in inside and not is_metadata_assert(u) and not _sizes_for(u, inside) for u in n.users):
            leaked.append(n)
    return leaked


def _sizes_for(node: Node, inside: set) -> bool:
    """`node` reads sizes only for the match (`x.size(-1) // 2` as a slice bound in it): it dies with the match."""
    return is_size_computation(node) and all(u in inside or _sizes_for(u, inside) for u in node.users)


def is_metadata_assert(node: Node) -> bool:
    """torch.export's `_assert_tensor_metadata` checks: side-effect-only users that must not pin a match."""
    return node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default


def shape_of(value: Any) -> tuple | None:
    t = tensor_meta(value)
    return tuple(t.shape) if t is not None else None
