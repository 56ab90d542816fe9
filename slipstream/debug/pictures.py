"""Pictures of a changed region before and after a rewrite: DOT text (Graphviz) and inline SVG (the HTML report).

The structure is a networkx DiGraph (nodes: the region's nodes and the values it reads; edges: data flow). The
SVG layout is ours, one row per topological generation, so the report needs neither Graphviz nor a server.
"""
from __future__ import annotations

import html

import networkx as nx

from .trace import RegionNode

COLORS = {"removed": "#f4c7c3", "added": "#b7e1cd", "input": "#e8eaed"}
_W, _H, _GAP_X, _GAP_Y, _CHARS = 260, 34, 16, 26, 38


def region_graph(nodes: list[RegionNode]) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n.ref, label=n.label, kind=n.kind)
    for n in nodes:
        for i in n.inputs:
            if i in g:
                g.add_edge(i, n.ref)
    return g


def to_dot(nodes: list[RegionNode], name: str) -> str:
    g = region_graph(nodes)
    lines = [f"digraph {_quote(name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="monospace", fontsize=10];']
    for ref, data in g.nodes(data=True):
        label = ref if data["kind"] == "input" else f"{ref} = {data['label']}"
        lines.append(f"  {_quote(ref)} [label={_quote(label)}, fillcolor={_quote(COLORS[data['kind']])}];")
    lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in g.edges]
    return "\n".join(lines + ["}"]) + "\n"


def to_svg(nodes: list[RegionNode]) -> str:
    g = region_graph(nodes)
    if not g:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    rows = [sorted(layer, key=list(g).index) for layer in nx.topological_generations(g)]
    pos = {}
    for y, row in enumerate(rows):
        for x, ref in enumerate(row):
            pos[ref] = (x * (_W + _GAP_X) + 4, y * (_H + _GAP_Y) + 4)
    width = max(len(r) for r in rows) * (_W + _GAP_X) + 8
    height = len(rows) * (_H + _GAP_Y) + 8
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="11">']
    for a, b in g.edges:
        (ax, ay), (bx, by) = pos[a], pos[b]
        parts.append(f'<line x1="{ax + _W / 2}" y1="{ay + _H}" x2="{bx + _W / 2}" y2="{by}" stroke="#5f6368"/>')
    for ref, data in g.nodes(data=True):
        x, y = pos[ref]
        text = ref if data["kind"] == "input" else f"{ref} = {data['label']}"
        short = text if len(text) <= _CHARS else text[:_CHARS - 1] + "…"
        parts.append(f'<g class="{data["kind"]}"><title>{html.escape(text)}</title>'
                     f'<rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="6" fill="{COLORS[data["kind"]]}" '
                     f'stroke="#3c4043"/><text x="{x + 6}" y="{y + _H / 2 + 4}">{html.escape(short)}</text></g>')
    return "\n".join(parts + ["</svg>"])


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
