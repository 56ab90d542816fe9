"""device_model_check.py, the end-to-end check a GPU session runs, proven here on CPU for one family (the PyTorch
references in place of the kernels); the `gpu` mark runs every family on CUDA."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("device_model_check.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SLIPSTREAM_TRITON_ON_CPU")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=1500)


@pytest.mark.slow
def test_device_model_check_runs_on_cpu():
    # every step of the script once: qwen3 in fp32 (generate) and bf16 (against fp32), llama's QLoRA check in bf16
    # (fp32 would repeat its steps)
    result = _run("--device", "cpu", "--families", "qwen3", "--qlora-families", "llama", "--qlora-dtypes", "bfloat16")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "3 passed, 0 failed"
    assert "generate identical True" in lines[0] and "vs fp32" in lines[1] and "qlora" in lines[-2]


@pytest.mark.gpu
def test_device_model_check_on_cuda():
    result = _run("--device", "cuda")
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
