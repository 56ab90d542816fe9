"""What slipstream did to a model: per pass, the sites it fused (rule, module path), what it refused and why,
and its time. Graphs are captured lazily (per unit and variant: prefill, decode, training), so the report
accumulates; a site counts once however many variants saw it.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..passes.base import PassStats


@dataclass
class PassRecord:
    name: str
    summary: str = ""
    seconds: float = 0.0
    runs: int = 0
    matches: dict = field(default_factory=dict)      # (rule, path) -> applications in one graph
    rejections: dict = field(default_factory=dict)   # (rule, path, reason) -> occurrences in one graph

    def add(self, stats: PassStats) -> None:
        self.seconds += stats.seconds
        self.runs += 1
        for key, n in Counter(stats.matches).items():
            self.matches[key] = max(self.matches.get(key, 0), n)
        for key, n in Counter((r.rule, r.path, r.reason) for r in stats.rejections).items():
            self.rejections[key] = max(self.rejections.get(key, 0), n)

    @property
    def fused(self) -> int:
        return sum(self.matches.values())

    def fused_paths(self) -> list[str]:
        return sorted({path for _, path in self.matches})


@dataclass
class Report:
    pipeline: str
    version: str
    units: list[str]
    passes: dict[str, PassRecord] = field(default_factory=dict)
    graphs: int = 0

    def record(self, unit: str, stats: list[PassStats]) -> None:
        self.graphs += 1
        for s in stats:
            self.passes.setdefault(s.name, PassRecord(s.name)).add(s)

    def fused(self, pass_name: str) -> int:
        record = self.passes.get(pass_name)
        return record.fused if record else 0

    def refusals(self, pass_name: str | None = None) -> list[tuple[str, str, str]]:
        names = [pass_name] if pass_name else list(self.passes)
        return sorted(k for n in names if n in self.passes for k in self.passes[n].rejections)

    def __str__(self) -> str:
        return render(self)


def _unit_summary(units: list[str]) -> str:
    groups: dict[str, list[str]] = defaultdict(list)
    for u in units:
        head, _, tail = u.rpartition(".")
        groups[head if tail.isdigit() else u].append(tail)
    parts = [f"{g}.[0-{len(t) - 1}]" if len(t) > 1 else (f"{g}.{t[0]}" if t[0].isdigit() else g)
             for g, t in groups.items()]
    return ", ".join(p or "<model>" for p in parts)


def render(report: Report) -> str:
    lines = [f"slipstream {report.version} · pipeline: {report.pipeline}",
             f"captured {report.graphs} graph(s) from {len(report.units)} unit(s): {_unit_summary(report.units)}"]
    if not report.graphs:
        lines.append("no graph captured yet: units are captured on their first call (run a forward first)")
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
    return "\n".join(lines)
