"""The dump directory written after generation (slipstream.dump): explain.txt, slipstream.json and report.html
carry the run-time decisions, and the repro.py rebuilds a Qwen3-TTS model and reruns the pipeline in a fresh process.
(The causal-LM dump and its repro.py run through the command line in tests/test_cli.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
import slipstream
from qwen_tts_env import ensure_qwen_tts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tts_dump_after_generate_has_the_decisions_and_its_repro_reruns(tmp_path):
    ensure_qwen_tts()
    from slipstream.frontend import qwen3_tts

    model = slipstream.optimize(qwen3_tts.build(qwen3_tts.config()), verify=True)
    ids, instruct = qwen3_tts.prompt([5, 6, 7, 8], [20, 21, 22])
    model.generate(input_ids=[ids], instruct_ids=[instruct], languages=["english"], **qwen3_tts.greedy(2))
    out = slipstream.dump(model, tmp_path / "dump")

    explain = (out / "explain.txt").read_text()
    assert "fold-mrope: fused 4" in explain
    assert "  > ran plain RoPE at 2 site(s) (mRoPE axes equal): talker.model.layers.[0-1].self_attn" in explain
    data = json.loads((out / "slipstream.json").read_text())
    assert data["version"] == slipstream.__version__ and data["pipeline"] == slipstream.report(model).pipeline
    assert data["passes"]["fuse-attention"]["fused"] == 4 and data["passes"]["fuse-attention"]["refused"] == []
    assert {"path": "talker.model.layers.1.self_attn", "implementation": "plain RoPE",
            "reason": "mRoPE axes equal"} in data["passes"]["fold-mrope"]["decisions"]
    assert data["checks"] and all(c["ok"] for c in data["checks"])
    assert "talker.code_predictor.model.layers.0" in data["units_run"]
    page = (out / "report.html").read_text()
    decisions = page[page.index('<table class="decisions">'):]
    assert "<td>fold-mrope</td><td>plain RoPE</td><td>mRoPE axes equal</td><td>2</td>" in decisions

    rerun = subprocess.run([sys.executable, str(out / "repro.py")], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1500)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"slipstream {slipstream.__version__} · pipeline: ")
    assert "=== graph 0: talker.model.layers.0" in rerun.stdout and "--- fold-mrope: 2 rewrite(s)" in rerun.stdout
    assert "run-time decisions:\n" in rerun.stdout and "ran plain RoPE at 2 site(s)" in rerun.stdout


def test_dump_dir_without_warmup_warns_and_dump_writes_the_graphs_later(tmp_path):
    with pytest.warns(UserWarning, match=r"holds no graph yet .* call slipstream\.dump\(model, dir\)"):
        model = slipstream.optimize(models.build("llama", num_hidden_layers=1), warmup=False,
                                    dump_dir=tmp_path / "early")
    assert (tmp_path / "early" / "pipeline.txt").is_file() and not (tmp_path / "early" / "graphs").exists()
    with torch.no_grad():
        model(models.token_batch())
    out = slipstream.dump(model, tmp_path / "later")
    assert (out / "graphs" / "g0-model.layers.0" / "00-input.py").is_file()
    assert json.loads((out / "slipstream.json").read_text())["passes"]["fuse-rms-norm"]["fused"] == 3
