"""What slipstream did to a model: per pass, the sites it fused (rule, module path), what it refused and why,
and its time.

Graphs are captured lazily, one per layer structure and variant (prefill, decode, training), and one graph can
serve many layers. So sites are attributed by what *ran*: each rewritten graph records, when it runs, which unit
ran it, and a unit's sites are those of the graphs it ran (a site counts once however many variants saw it).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..passes.base import PassStats


@dataclass
class GraphRecord:
    unit: str                      # the unit whose call captured it; paths below are relative to it
    matches: dict                  # pass -> Counter[(rule, relative path)]
    rejections: dict               # pass -> Counter[(rule, relative path, reason)]


@dataclass
class PassRecord:
    name: str
    summary: str = ""
    seconds: float = 0.0
    runs: int = 0
    matches: dict = field(default_factory=dict)      # (rule, path) -> applications in one graph
    rejections: dict = field(default_factory=dict)   # (rule, path, reason) -> occurrences in one graph

    @property
    def fused(self) -> int:
        return sum(self.matches.values())

    def fused_paths(self) -> list[str]:
        return sorted({path for _, path in self.matches})


def _relative(path: str, unit: str) -> str:
    if not unit:
        return path
    return path[len(unit) + 1:] if path.startswith(unit + ".") else ("" if path == unit else path)


def _absolute(rel: str, unit: str) -> str:
    return ".".join(p for p in (unit, rel) if p)


@dataclass
class Report:
    pipeline: str
    version: str
    units: list[str]
    pass_names: list[str] = field(default_factory=list)
    graph_pass_names: list[str] = field(default_factory=list)
    summaries: dict = field(default_factory=dict)
    graph_records: list[GraphRecord] = field(default_factory=list)
    runs: set = field(default_factory=set)           # (unit, graph id) pairs seen at run time
    seconds: dict = field(default_factory=lambda: defaultdict(float))
    decision_log: set = field(default_factory=set)   # (pass, unit, site, implementation, reason) made at run time
    notes: dict = field(default_factory=dict)        # pass -> extra lines for explain() (module passes)
    module_records: list = field(default_factory=list)  # GraphRecords of module passes (whole model, ran once)
    traces: list = field(default_factory=list)        # debug/trace.GraphTrace per graph id: the graph diff
    checks: list = field(default_factory=list)        # debug/verify.RegionCheck per rewrite (verify=True)
    debug: Any = None                                 # debug/options.DebugOptions the model was optimized with

    def record_module_pass(self, stats: PassStats, notes: list[str]) -> None:
        self.seconds[stats.name] += stats.seconds
        self.module_records.append(GraphRecord(
            "", {stats.name: Counter(stats.matches)},
            {stats.name: Counter((r.rule, r.path, r.reason) for r in stats.rejections)}))
        self.notes[stats.name] = list(notes)

    @property
    def graphs(self) -> int:
        return len(self.graph_records)

    def record(self, unit: str, stats: list[PassStats], trace=None) -> int:
        """Store a newly captured graph's pass results (and its trace, for the graph diff); returns its graph id."""
        if trace is not None:
            self.traces.append(trace)
        matches, rejections = {}, {}
        for s in stats:
            self.seconds[s.name] += s.seconds
            matches[s.name] = Counter((rule, _relative(path, unit)) for rule, path in s.matches)
            rejections[s.name] = Counter((r.rule, _relative(r.path, unit), r.reason) for r in s.rejections)
        self.graph_records.append(GraphRecord(unit, matches, rejections))
        return len(self.graph_records) - 1

    def ran(self, unit: str, graph_id: int) -> None:
        self.runs.add((unit, graph_id))

    @property
    def passes(self) -> dict[str, PassRecord]:
        records = {n: PassRecord(n, self.summaries.get(n, ""), self.seconds.get(n, 0.0), self.graphs)
                   for n in self.pass_names}
        ran = [(unit, self.graph_records[gid]) for unit, gid in sorted(self.runs)]
        for unit, graph in ran + [("", r) for r in self.module_records]:
            for name, record in records.items():
                for (rule, rel), n in graph.matches.get(name, {}).items():
                    key = (rule, _absolute(rel, unit))
                    record.matches[key] = max(record.matches.get(key, 0), n)
                for (rule, rel, reason), n in graph.rejections.get(name, {}).items():
                    key = (rule, _absolute(rel, unit), reason.replace(graph.unit, unit) if graph.unit else reason)
                    record.rejections[key] = max(record.rejections.get(key, 0), n)
        return records

    def fused(self, pass_name: str) -> int:
        record = self.passes.get(pass_name)
        return record.fused if record else 0

    def refusals(self, pass_name: str | None = None) -> list[tuple[str, str, str]]:
        passes = self.passes
        names = [pass_name] if pass_name else list(passes)
        return sorted(k for n in names if n in passes for k in passes[n].rejections)

    def decisions(self, pass_name: str | None = None) -> list[tuple[str, str, str]]:
        """Run-time choices at this model's rewritten sites (attention kernels, mRoPE folds), of one pass or all:
        (module path, implementation, reason)."""
        return sorted({(_absolute(site, unit), impl, reason) for name, unit, site, impl, reason in self.decision_log
                       if pass_name in (None, name)})

    def __str__(self) -> str:
        return render(self)


def unit_summary(paths: list[str]) -> str:
    """`a.layers.0.x, a.layers.1.x, a.norm` -> `a.layers.[0-1].x, a.norm` (one entry per run of layer indices)."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    order: list[tuple[str, str]] = []
    for p in paths:
        m = re.match(r"^(.*?)\.(\d+)((?:\..*)?)$", p)
        key = (m.group(1), m.group(3)) if m else (p, None)
        if key not in groups:
            order.append(key)
        groups[key].append(int(m.group(2)) if m else -1)
    parts = []
    for head, tail in order:
        idx = sorted(groups[(head, tail)])
        if tail is None:
            parts.append(head or "<model>")
        elif len(idx) > 1 and idx == list(range(idx[0], idx[-1] + 1)):
            parts.append(f"{head}.[{idx[0]}-{idx[-1]}]{tail}")
        else:
            parts.extend(f"{head}.{i}{tail}" for i in idx)
    return ", ".join(parts)


def render(report: Report) -> str:
    lines = [f"slipstream {report.version} · pipeline: {report.pipeline}",
             f"captured {report.graphs} graph(s) serving {len({u for u, _ in report.runs})} of "
             f"{len(report.units)} unit(s): {unit_summary(report.units)}"]
    if not report.runs:
        lines.append("no graph has run yet: units are captured on their first call (run a forward first)")
    for record in report.passes.values():
        rules = Counter()
        for (rule, _), n in record.matches.items():
            rules[rule] += n
        by_rule = ", ".join(f"{r} x{n}" for r, n in sorted(rules.items())) or "-"
        lines.append(f"\n{record.name}: fused {record.fused} ({by_rule}) · refused {len(record.rejections)} · "
                     f"{record.seconds * 1e3:.1f} ms over {record.runs} graph(s)")
        for path in record.fused_paths():
            rules_here = sorted({f"{r} x{n}" if n > 1 else r for (r, p), n in record.matches.items() if p == path})
            lines.append(f"  + {path or '<model>'}: {', '.join(rules_here)}")
        for rule, path, reason in sorted(record.rejections):
            lines.append(f"  ! {path or '<model>'}: refused{'' if rule == '-' else f' ({rule})'}: {reason}")
        lines.extend(f"  = {note}" for note in report.notes.get(record.name, ()))
        lines.extend(decision_lines(report.decisions(record.name)))
    return "\n".join(lines)


def decision_groups(decisions: list[tuple[str, str, str]]) -> list[tuple[str, str, list[str]]]:
    """(implementation, reason, module paths) per distinct choice, sorted: how explain() and the HTML show them."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path, impl, reason in decisions:
        grouped[(impl, reason)].append(path)
    return [(impl, reason, paths) for (impl, reason), paths in sorted(grouped.items())]


def decision_lines(decisions: list[tuple[str, str, str]]) -> list[str]:
    """One `> ran <impl> at <n> site(s) (<reason>): <units>` line per (implementation, reason) a pass chose."""
    return [f"  > ran {impl} at {len(paths)} site(s) ({reason}): {unit_summary(paths)}"
            for impl, reason, paths in decision_groups(decisions)]


def as_data(report: Report) -> dict:
    """The report as JSON-ready data (the dump's slipstream.json): what render() shows, one entry per site."""
    passes = {}
    for name, record in report.passes.items():
        passes[name] = {
            "fused": record.fused,
            "sites": [{"rule": rule, "path": path, "count": n} for (rule, path), n in sorted(record.matches.items())],
            "refused": [{"rule": rule, "path": path, "reason": reason}
                        for rule, path, reason in sorted(record.rejections)],
            "decisions": [{"path": path, "implementation": impl, "reason": reason}
                          for path, impl, reason in report.decisions(name)],
        }
    return {"version": report.version, "pipeline": report.pipeline, "units": list(report.units),
            "units_run": sorted({unit for unit, _ in report.runs}), "graphs": report.graphs, "passes": passes,
            "checks": [{"line": c.line(), "ok": c.ok} for c in report.checks]}
