"""The graph diff as text: per captured graph, per pass, what it removed (`-`) and added (`+`).

    === graph 1: model.layers.0 (serves model.layers.[0-1]) · 64 ops
    --- fuse-rms-norm: 2 rewrite(s) (weight-times-cast x2) · 0 refused · 1.3 ms
    @@ weight-times-cast at model.layers.0.input_layernorm: %9 -> %83
    - %4 = cast(%arg1, torch.float32) : f32[s0, s1, 64]
    ...
    + %83 = slipstream.rms_norm(%arg1, %input_layernorm.weight, %3, 0.0, True) : f32[s0, s1, 64]  [fuse-rms-norm:weight-times-cast]
    ! weight-times-cast at model.norm: <reason>

Node names are normalised (graph_text.py), so with `times=False` the text is a golden file.
"""
from __future__ import annotations

from collections import Counter

from .options import PRINT_AFTER
from .report import Report, unit_summary


def render_diff(report: Report, print_after: str = "change", times: bool = True) -> str:
    if print_after not in PRINT_AFTER:
        raise ValueError(f"print-after must be one of {', '.join(PRINT_AFTER)}, not {print_after!r}")
    lines = [f"slipstream {report.version} · pipeline: {report.pipeline}"]
    if not report.traces:
        lines.append("no graph captured yet: units are captured on their first call (run a forward first)")
    for trace in report.traces:
        served = sorted({unit for unit, gid in report.runs if gid == trace.graph_id})
        lines.append(f"\n=== graph {trace.graph_id}: {trace.unit or '<model>'} (serves "
                     f"{unit_summary(served) or 'no unit yet'}) · {trace.ops} ops")
        for p in trace.passes:
            if print_after == "change" and not (p.changed or p.rejections):
                continue
            lines.append(_pass_header(p, times))
            if print_after != "none":
                lines.extend(_pass_body(p))
    if report.checks:
        lines.append("")
        lines.extend(verify_lines(report.checks))
    return "\n".join(lines) + "\n"


def _pass_header(p, times: bool) -> str:
    by_rule = ", ".join(f"{r} x{n}" for r, n in sorted(p.matches.items()))
    rewrites = sum(len(h.rewrites) for h in p.hunks)
    head = f"--- {p.name}: " + (f"{rewrites} rewrite(s) ({by_rule})" if p.changed else "no change")
    head += f" · {len(p.rejections)} refused"
    return head + (f" · {p.seconds * 1e3:.1f} ms" if times else "")


def _pass_body(p) -> list[str]:
    lines = []
    for hunk in p.hunks:
        rules = "+".join(dict.fromkeys(hunk.rules))
        replaces = ", ".join(f"{a} -> {b}" for a, b in hunk.replaces)
        lines.append(f"@@ {rules} at {hunk.path or '<model>'}: {replaces}")
        lines.extend(f"- {line}" for line in hunk.removed)
        lines.extend(f"+ {line}" for line in hunk.added)
    for r in p.rejections:
        rule = "" if r.rule == "-" else f"{r.rule} "
        lines.append(f"! {rule}at {r.path or '<model>'}: {r.reason}")
    return lines


def verify_lines(checks: list) -> list[str]:
    """The numeric check's summary: counts per verdict, then every region (the first bad one flagged)."""
    bad = [c for c in checks if not c.ok]
    verdicts = Counter("skipped" if c.skipped else "ok" if c.ok else "out of tolerance" for c in checks)
    lines = [f"verify: {len(checks)} region(s) checked · " + " · ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))]
    if bad:
        lines.append(f"verify: FIRST REGION OUT OF TOLERANCE: {bad[0].line()}")
    lines.extend(f"  {'-- ' if c.skipped else 'ok ' if c.ok else 'BAD'} {c.line()}" for c in checks)
    return lines
