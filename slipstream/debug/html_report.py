"""A self-contained HTML report of a graph diff: one file, inline CSS and SVG, no scripts, no server.

Per graph and changed pass: each region's before/after picture and a table of removed and added nodes (class
`region`), the pass's refusals, the numeric check's table when there is one (class `verify`), and the run-time
decisions made so far (class `decisions`: which implementation ran at which sites, and why).
"""
from __future__ import annotations

import html

from .diff import verify_lines
from .pictures import COLORS, to_svg
from .report import Report, decision_groups, unit_summary

_CSS = f"""
body {{ font-family: sans-serif; margin: 24px; background: #ffffff; color: #202124; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 17px; border-bottom: 2px solid #1a73e8; }} h3 {{ font-size: 15px; }}
code, td {{ font-family: monospace; font-size: 12px; }}
table {{ border-collapse: collapse; margin: 6px 0 14px; }} td {{ border: 1px solid #dadce0; padding: 2px 6px; }}
tr.removed td {{ background: {COLORS['removed']}; }} tr.added td {{ background: {COLORS['added']}; }}
tr.bad td {{ background: {COLORS['removed']}; font-weight: bold; }}
.pictures {{ display: flex; gap: 24px; align-items: flex-start; overflow-x: auto; }}
.refused {{ color: #b06000; font-family: monospace; font-size: 12px; }}
"""


def render_html(report: Report) -> str:
    e = html.escape
    body = [f"<h1>slipstream {e(report.version)} · graph diff</h1>",
            f"<p>pipeline: <code>{e(report.pipeline)}</code></p>"]
    if report.checks:
        body.append(_verify_table(report.checks))
    if report.decision_log:
        body.append(_decisions_table(report))
    for trace in report.traces:
        served = sorted({unit for unit, gid in report.runs if gid == trace.graph_id})
        body.append(f'<h2 id="graph-{trace.graph_id}">graph {trace.graph_id}: {e(trace.unit or "<model>")} '
                    f"(serves {e(unit_summary(served) or 'no unit yet')})</h2>")
        for p in trace.passes:
            if not (p.changed or p.rejections):
                continue
            body.append(f"<h3>{e(p.name)}: {sum(len(h.rewrites) for h in p.hunks)} rewrite(s), "
                        f"{len(p.rejections)} refused, {p.seconds * 1e3:.1f} ms</h3>")
            body.extend(_hunk(h) for h in p.hunks)
            body.extend(f'<p class="refused">! {e(r.rule)} at {e(r.path or "<model>")}: {e(r.reason)}</p>'
                        for r in p.rejections)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>slipstream graph diff</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _hunk(h) -> str:
    e = html.escape
    rows = [f'<tr class="removed"><td>-</td><td>{e(line)}</td></tr>' for line in h.removed]
    rows += [f'<tr class="added"><td>+</td><td>{e(line)}</td></tr>' for line in h.added]
    replaces = ", ".join(f"{a} → {b}" for a, b in h.replaces)
    return (f'<div class="hunk"><p><b>{e("+".join(dict.fromkeys(h.rules)))}</b> at '
            f"<code>{e(h.path or '<model>')}</code>: {e(replaces)}</p>"
            f'<div class="pictures"><div><p>before</p>{to_svg(h.before)}</div>'
            f'<div><p>after</p>{to_svg(h.after)}</div></div>'
            f'<table class="region">{"".join(rows)}</table></div>')


def _verify_table(checks: list) -> str:
    e = html.escape
    head = verify_lines(checks)[:2 if any(not c.ok for c in checks) else 1]
    rows = "".join(f'<tr class="{"ok" if c.ok else "bad"}"><td>{"ok" if c.ok else "BAD"}</td>'
                   f"<td>{e(c.pass_name)}:{e(c.rule)}</td><td>{e(c.path)}</td><td>{c.max_abs:.3g}</td>"
                   f"<td>{c.max_rel:.3g}</td><td>{e(c.dtype)} {c.tolerance:g}</td><td>{e(c.note)}</td></tr>"
                   for c in checks)
    return ("<h2>numeric check</h2>" + "".join(f"<p><code>{e(line)}</code></p>" for line in head) +
            '<table class="verify"><tr><td>verdict</td><td>rule</td><td>module</td><td>max abs</td>'
            f"<td>max rel</td><td>tolerance</td><td>note</td></tr>{rows}</table>")


def _decisions_table(report: Report) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(name)}</td><td>{e(impl)}</td><td>{e(reason)}</td><td>{len(paths)}</td>"
                   f"<td>{e(unit_summary(paths))}</td></tr>"
                   for name in sorted(report.pass_names)
                   for impl, reason, paths in decision_groups(report.decisions(name)))
    return ('<h2>run-time decisions</h2><table class="decisions"><tr><td>pass</td><td>ran</td><td>why</td>'
            f"<td>sites</td><td>where</td></tr>{rows}</table>")
