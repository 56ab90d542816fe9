"""Make qwen-tts importable for the Qwen3-TTS tests on a fresh machine.

qwen-tts declares gradio, librosa, torchaudio, onnxruntime, sox, ... (89 packages; torchaudio would replace the
pinned torch), none of which the model code needs, and pip extras cannot say `--no-deps`. So pyproject's `test`
extra does not list it; instead the first Qwen3-TTS test installs exactly `qwen-tts==0.1.1` without dependencies
into the running interpreter (once, under a file lock shared by the xdist workers). Its real runtime needs
(transformers 4.57.3, safetensors, huggingface_hub) are slipstream's own dependencies. A failed install fails the
tests with pip's output: never a skip.
"""
from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile

import pytest

REQUIREMENT = "qwen-tts==0.1.1"


def ensure_qwen_tts() -> None:
    if importlib.util.find_spec("qwen_tts") is not None:
        return
    lock_path = os.path.join(tempfile.gettempdir(), "slipstream-qwen-tts-install.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        importlib.invalidate_caches()
        if importlib.util.find_spec("qwen_tts") is not None:
            return  # another worker installed it while we waited
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", REQUIREMENT],
                                capture_output=True, text=True)
        importlib.invalidate_caches()
    if result.returncode != 0 or importlib.util.find_spec("qwen_tts") is None:
        pytest.fail(f"could not install {REQUIREMENT} (pip install --no-deps): {result.stdout}\n{result.stderr}")
