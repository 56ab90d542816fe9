"""The GPU session's scripts that also run on a CPU still run to the end (benchmarks/gpu_session.sh). A GPU machine
is lent to few sessions, and a script broken by a refactor of the internals it reads would waste one. Timings
here mean nothing: the checks are that each script completes and prints its rows."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_tts_env import ensure_qwen_tts

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, **env: str) -> str:
    environment = {**os.environ, **env}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True,
                            text=True, env=environment, timeout=1500)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_launch_overhead_runs_under_the_interpreter():
    out = run_script("launch_overhead.py", "--device", "cpu", "--calls", "1", "--rounds", "1", TRITON_INTERPRET="1")
    for row in ("empty kernel, 20 arguments", "_weight_args", "bare launch", "dequantize(): all of the above",
                "rms_norm: through the dispatcher", "attention (decode): eager ATen ops"):
        assert row in out


@pytest.mark.slow
def test_decode_layer_calls_runs_on_cpu():
    ensure_qwen_tts()
    out = run_script("decode_layer_calls.py", "--calls", "10")
    assert "talker.model.layers.0" in out and "talker.code_predictor.model.layers.0" in out
    for row in ("eager", "slipstream", "guard check (finds the variant)", "transformed code + graph",
                "slipstream graph only"):
        assert len(re.findall(rf"^  {re.escape(row)} +host ", out, re.M)) == 2, row  # one per layer


def test_kernels_smoke_runs_under_the_interpreter():
    out = run_script("kernels.py", "--smoke", "--reps", "1", TRITON_INTERPRET="1")
    for op in ("rms_norm", "swiglu", "geglu-tanh", "rope"):
        assert re.search(rf"^{re.escape(op)} +speedup vs eager", out, re.M), op


@pytest.mark.slow
def test_tts_generate_runs_on_cpu():
    ensure_qwen_tts()
    out = run_script("tts_generate.py", "--frames", "3", "--repeats", "1")
    assert "identical frames: True" in out
    for row in ("reference", "slipstream", "via torch.compile"):
        assert re.search(rf"^  {re.escape(row)} +[\d.]+ frames/s", out, re.M), row
        assert re.search(rf"^  {re.escape(row)} +[\d.]+ ms  ratio [\d.]+ \[[\d.]+-[\d.]+\]$", out, re.M), row
