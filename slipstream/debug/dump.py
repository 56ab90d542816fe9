"""The dump directory (`optimize(..., dump_dir=DIR)`, `--dump-dir DIR`): everything needed to look at, and rerun,
what the pipeline did.

    pipeline.txt                     the canonical pipeline string
    diff.txt                         the graph diff (slipstream.diff)
    explain.txt                      slipstream.explain: fused sites, refusals, run-time decisions
    slipstream.json                  the same as data (version, pipeline, units, per pass: sites, refusals, decisions)
    report.html                      the same with region pictures; opens in a browser, no server
    graphs/g<N>-<unit>/00-input.py   each captured graph as GraphModule.code prints it, then after each changed pass
    regions/g<N>-<pass>-<K>-{before,after}.dot   each changed region (Graphviz)
    config.json, repro.py            the model's config and a script that reruns the pipeline on it
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from torch import nn

from .diff import render_diff
from .html_report import render_html
from .pictures import to_dot
from .report import as_data, render

_REPRO = '''"""Rerun slipstream's pipeline on the model this dump came from (written by slipstream {version}).

    python repro.py [CHECKPOINT_DIR]

The model: CHECKPOINT_DIR, else the checkpoint the dump was made from if it still exists, else a random model
(seed 0) of the config saved next to this file. Prints the graph diff and the run-time decisions; exits 1 if a
rewrite is out of tolerance. What runs: slipstream.debug.repro.
"""
import pathlib
import sys

from slipstream.debug import repro

if __name__ == "__main__":
    sys.exit(repro.main(pathlib.Path(__file__).resolve().parent, {checkpoint!r}, {verify!r}, sys.argv[1:]))
'''


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "model"


def write_dump(model: nn.Module, directory: str | Path, checkpoint: str | None = None) -> Path:
    from ..backends.module import report_of

    report = report_of(model)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.txt").write_text(report.pipeline + "\n", encoding="utf-8")
    (out / "diff.txt").write_text(render_diff(report, report.debug.print_after), encoding="utf-8")
    (out / "explain.txt").write_text(render(report) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    for trace in report.traces:
        _write_graphs(out / "graphs" / f"g{trace.graph_id}-{_safe(trace.unit)}", trace)
        for p in trace.passes:
            for k, hunk in enumerate(p.hunks):
                stem = out / "regions" / f"g{trace.graph_id}-{p.name}-{k}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                Path(f"{stem}-before.dot").write_text(to_dot(hunk.before, f"{stem.name} before"), encoding="utf-8")
                Path(f"{stem}-after.dot").write_text(to_dot(hunk.after, f"{stem.name} after"), encoding="utf-8")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        (out / "config.json").write_text(config.to_json_string(), encoding="utf-8")
        source = checkpoint or getattr(config, "_name_or_path", "") or None
        source = source if source and (Path(source) / "config.json").is_file() else None
        source = str(Path(source).resolve()) if source else None
        (out / "repro.py").write_text(_REPRO.format(version=report.version, checkpoint=source,
                                                    verify=bool(report.debug.verify)), encoding="utf-8")
    (out / "slipstream.json").write_text(json.dumps(as_data(report), indent=1) + "\n", encoding="utf-8")
    return out


def _write_graphs(directory: Path, trace) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if trace.input_code is None:
        return
    (directory / "00-input.py").write_text(trace.input_code, encoding="utf-8")
    changed = [p for p in trace.passes if p.code is not None]
    for i, p in enumerate(changed, start=1):
        (directory / f"{i:02d}-{p.name}.py").write_text(p.code, encoding="utf-8")
