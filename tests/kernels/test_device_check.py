"""device_check.py, the script a GPU session runs, proven here on CPU under the interpreter; on a CUDA machine the
`gpu` mark runs it for real in a fresh process without TRITON_INTERPRET."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("device_check.py")


def _run(device: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SLIPSTREAM_TRITON_ON_CPU")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), "--device", device], env=env, capture_output=True,
                          text=True, timeout=1500)


@pytest.mark.slow
def test_device_check_runs_under_the_interpreter():
    result = _run("cpu", interpret=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "28 passed, 0 failed"


@pytest.mark.gpu
def test_device_check_on_cuda():
    result = _run("cuda", interpret=False)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
