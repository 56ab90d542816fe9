"""fold-mrope: multimodal RoPE's per-frequency axis selection -> slipstream::mrope_select.

mRoPE models hand each layer cos/sin *tables* [A, b, s, d] (one per position axis: temporal, height, width) and
the layer picks, per frequency, the axis it belongs to. Two layouts, as the models write them:
- interleaved (Qwen3-TTS, Qwen3-VL): `x = t[..., :d // 2]; y = x[0].clone(); y[..., i:e:3] = x[i, ..., i:e:3]`
  for each further axis, then `cat([y, y], -1)`;
- sections (Qwen2-VL): `cat([m[i % 3] for i, m in enumerate(t.split(sections, -1))], -1)`.
Both become one `slipstream::mrope_select` call. Which axes hold what is data (position ids built outside the
layer), so the op decides per call: equal axes (text-only input) -> axis 0, plain RoPE; axes that differ -> the
exact selection, recorded with the reason "mRoPE axes differ"; explain() shows the decision per site. The RoPE
application on the selected cos/sin is fuse-rope's. Recognised by shape (reads of a table's leading axis written
into one tensor), never by module class.
"""
from __future__ import annotations

import operator

import torch
from torch.fx import Graph, Node

from ..kernels.mrope import OPEN
from .base import Pass, Rule
from .checks import same_size, scalar
from .ops import site_path, tensor_meta, view
from .pattern import Match, Recognizer


def _index(node) -> tuple[Node, int | None, slice] | None:
    """`src[a]`, `src[a, ..., cols]` or `src[..., cols]` (a tensor read) -> (src, a or None, cols)."""
    if not (isinstance(node, Node) and node.op == "call_function" and node.target is operator.getitem):
        return None
    src, idx = node.args[0], node.args[1]
    if tensor_meta(src) is None:
        return None
    if isinstance(idx, int):
        return src, idx, slice(None)
    if isinstance(idx, tuple) and len(idx) == 3 and isinstance(idx[0], int) and idx[1] is Ellipsis \
            and isinstance(idx[2], slice):
        return src, idx[0], idx[2]
    if isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice):
        return src, None, idx[1]
    return None


def _chunk(node) -> tuple[Node, int] | None:
    """`pieces[k]` of a split's tuple of chunks along the last dim -> (split node, k)."""
    if not (isinstance(node, Node) and node.op == "call_function" and node.target is operator.getitem):
        return None
    src, k = node.args
    return (src, k) if isinstance(k, int) and _split(src) is not None else None


def _bounds(cols: slice) -> tuple[int, int, int] | None:
    """A constant column slice as (start, end, step), open ends as OPEN; None if a bound is computed."""
    start, end, step = (0 if cols.start is None else cols.start, OPEN if cols.stop is None else cols.stop,
                        1 if cols.step is None else cols.step)
    return (start, end, step) if all(type(v) is int for v in (start, end, step)) else None


def _table(d: Node) -> tuple[Node, bool, list]:
    """(table, half, nodes): `d` is `table[..., :W // 2]` (half, its slice node matched) or the table itself."""
    idx = _index(d)
    if idx is not None and idx[1] is None and idx[2].start in (None, 0) and idx[2].step in (None, 1):
        t = tensor_meta(idx[0])
        if t is not None and t.dim() >= 2 and same_size(scalar(idx[2].stop), t.shape[-1] // 2):
            return idx[0], True, [d]
    return d, False, []


def _cat_last(node: Node) -> list | None:
    v = view(node)
    return list(v.inputs) if v is not None and v.name == "cat" and v.params["dim"] == -1 else None


def _is_setitem(node: Node, target: Node) -> bool:
    return node.op == "call_function" and node.target is operator.setitem and node.args[0] is target


def _is_clone(node) -> bool:
    v = view(node)
    return v is not None and v.name == "clone" and not node.kwargs


def _found(table: Node, half: bool, writes: list, repeat: int, problem: str | None, nodes: list):
    return {"table": table, "half": half, "writes": writes, "repeat": repeat, "problem": problem}, nodes


def _interleaved(root: Node):
    """`cat([y] * n, -1)` of `y = x[0].clone()` written in place with `y[..., cols] = x[a, ..., cols]`."""
    tensors = _cat_last(root)
    if not tensors or any(t is not tensors[0] for t in tensors) or not _is_clone(tensors[0]):
        return None
    y = tensors[0]
    pick = _index(y.args[0])
    if pick is None or pick[1] != 0 or pick[2] != slice(None):
        return None
    x = pick[0]
    order = {n: i for i, n in enumerate(root.graph.nodes)}
    stores = sorted((u for u in y.users if _is_setitem(u, y)), key=order.get)
    if not stores:
        return None  # nothing written: not a selection
    writes, problems, nodes = [], [], []
    for u in stores:
        dst, src = _index_like(u.args[1]), _index(u.args[2])
        nodes.append(u)
        if src is None or dst is None or src[1] is None:
            problems.append("a write stores something other than columns of one axis of a table")
            continue
        nodes.append(u.args[2])
        if src[0] is not x:
            problems.append("a write reads another tensor than the table the selection starts from")
        elif src[2] != dst or _bounds(dst) is None:
            problems.append(f"a write stores columns {_text(src[2])} of axis {src[1]} into columns {_text(dst)} "
                            "(not a per-column axis choice)")
        elif order[u] > order[root]:
            problems.append("a write comes after the selection is read")
        else:
            writes.append((src[1], *_bounds(dst)))
    table, half, sliced = _table(x)
    problem = problems[0] if problems else None
    return _found(table, half, writes, len(tensors), problem, sliced + nodes + [y.args[0], y, root])


def _index_like(idx) -> slice | None:
    """A setitem's index `[..., cols]` -> cols."""
    if isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice):
        return idx[1]
    return None


def _text(cols: slice) -> str:
    return ":".join("" if v is None else str(v) for v in (cols.start, cols.stop, cols.step))


def _split(node) -> tuple[Node, list] | None:
    """`x.split(sizes, -1)` / `torch.split(x, sizes, dim=-1)` with a list of sizes -> (x, sizes)."""
    if not isinstance(node, Node) or not (node.op == "call_method" and node.target == "split"
                                          or node.op == "call_function" and node.target is torch.split):
        return None
    x = node.args[0]
    sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections",
                                                                      node.kwargs.get("split_size"))
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    t = tensor_meta(x)
    if t is None or not isinstance(sizes, (list, tuple)) or dim not in (-1, t.dim() - 1):
        return None
    return x, list(sizes)


def _sections(root: Node):
    """`cat([chunk_0[a_0], chunk_1[a_1], ...], -1)` of the chunks of `x.split(sizes, -1)`."""
    tensors = _cat_last(root)
    picks = [_index(t) for t in tensors or ()]
    if len(picks) < 2 or any(p is None or p[1] is None or p[2] != slice(None) for p in picks):
        return None
    chunks = [_chunk(p[0]) for p in picks]
    if any(c is None or c[0] is not chunks[0][0] for c in chunks):
        return None
    split = chunks[0][0]
    x, sizes = _split(split)
    table, half, nodes = _table(x)
    problem = None
    if [c[1] for c in chunks] != list(range(len(sizes))) or not all(type(s) is int for s in sizes):
        problem = f"the cat takes chunks {[c[1] for c in chunks]} of a split into {len(sizes)}, not each once in order"
    writes, start = [], 0
    for p, size in zip(picks, sizes if problem is None else ()):
        if p[1] != 0:
            writes.append((p[1], start, start + size, 1))
        start += size
    matched = nodes + [split] + [t.args[0] for t in tensors] + list(tensors) + [root]
    return _found(table, half, writes, 1, problem, matched)


def _check(m: Match) -> str | None:
    if m["problem"]:
        return m["problem"]
    t = tensor_meta(m["table"])
    if t is None or t.dim() < 2:
        return "the mRoPE table is not a tensor of at least two dims"
    if not any(a != 0 for a, *_ in m["writes"]):
        return "every column reads axis 0 (already plain RoPE)"
    return None


class FoldMrope(Pass):
    name = "fold-mrope"
    anchors = ("getitem",)
    summary = "mRoPE per-frequency axis selection (interleaved or sections) -> slipstream::mrope_select " \
              "(plain RoPE when the axes are equal)"

    def is_anchor(self, node: Node) -> bool:
        """`t[a]` of a split chunk, or `t[0]` cloned while another axis of `t` is read: not any `x[0]`."""
        idx = _index(node)
        if idx is None or not isinstance(node.args[1], int):
            return False
        src = idx[0]
        if _chunk(src) is not None:
            return True
        axes = {i[1] for i in map(_index, src.users) if i is not None and i[1] is not None}
        return idx[1] == 0 and len(axes) > 1 and any(_is_clone(u) for u in node.users)

    def rules(self) -> list[Rule]:
        return [Rule("interleaved", Recognizer(_interleaved), _replace, _check),
                Rule("sections", Recognizer(_sections), _replace, _check)]


def _replace(graph: Graph, m: Match) -> Node:
    axes, starts, ends, steps = (list(col) for col in zip(*m["writes"]))
    return graph.call_function(torch.ops.slipstream.mrope_select.default, (
        m["table"], m["half"], axes, starts, ends, steps, m["repeat"], site_path(m.root),
        m.root.meta.get("slipstream_unit", "")))
