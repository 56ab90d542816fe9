"""The interpreter is lenient: every kernel configuration the wrappers pick also compiles to sm_90 cubin (no GPU
needed), within an H100's shared memory where a kernel uses it. All groups in one subprocess (compile_for_cuda.py),
which runs without TRITON_INTERPRET: one start-up of Python, torch and triton's backend instead of one per group."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
GROUPS = ("elementwise", "quant-linear", "attention")  # compile_for_cuda.py's, each must report ok


@pytest.mark.slow
def test_kernels_compile_for_cuda(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(_HERE.parents[1]), env.get("PYTHONPATH")])),
               TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, str(_HERE / "compile_for_cuda.py")], env=env, capture_output=True,
                            text=True, timeout=1500)
    if result.returncode == 77:
        pytest.skip("this triton build has no CUDA backend")
    output = result.stdout + result.stderr
    for group in GROUPS:
        assert f"{group}: ok" in result.stdout.splitlines(), f"{group} did not compile:\n{output}"
    assert result.returncode == 0, output
