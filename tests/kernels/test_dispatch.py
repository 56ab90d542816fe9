"""Implementation selection, and the GPU build of the kernels (checked without a GPU)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slipstream.kernels import force_triton_on_cpu, rms_norm, use_triton

torch.set_num_threads(1)

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]


def _env(**overrides: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def test_cpu_uses_reference_unless_forced(monkeypatch):
    monkeypatch.delenv("SLIPSTREAM_TRITON_ON_CPU", raising=False)
    t = torch.ones(2)
    assert not use_triton(t)
    with force_triton_on_cpu():
        with force_triton_on_cpu():
            assert use_triton(t)
        assert use_triton(t)
    assert not use_triton(t)
    monkeypatch.setenv("SLIPSTREAM_TRITON_ON_CPU", "1")
    assert use_triton(t)


@pytest.mark.parametrize("how", ["context", "env"])
def test_forcing_without_interpreter_raises(monkeypatch, how):
    monkeypatch.delenv("TRITON_INTERPRET")
    x, w = torch.randn(2, 8), torch.randn(8)
    if how == "env":
        monkeypatch.setenv("SLIPSTREAM_TRITON_ON_CPU", "1")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            rms_norm(x, w)
    else:
        with force_triton_on_cpu(), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            rms_norm(x, w)


def test_import_is_lazy_and_stale_kernels_are_caught():
    """Importing slipstream.kernels does not import triton; kernels decorated before TRITON_INTERPRET was set
    (compiled JITFunctions) raise a clear error on CPU tensors instead of crashing in the driver."""
    script = textwrap.dedent(
        """
        import os, sys, torch
        import slipstream.kernels as K
        assert "triton" not in sys.modules, "importing slipstream.kernels imported triton"
        import slipstream.kernels.triton_rms_norm  # decorated without the interpreter
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            with K.force_triton_on_cpu():
                K.rms_norm(torch.randn(2, 8), torch.randn(8))
        except RuntimeError as e:
            assert "compiled for the GPU" in str(e), e
        else:
            raise AssertionError("no error")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr


def test_host_grid_helpers_equal_tritons():
    """Launch code computes grids and tiles with our plain-int cdiv / next_power_of_2 (Triton's are constexpr
    functions, ~3 us a call): they must give Triton's values, including at 0 and 1."""
    import triton

    from slipstream.kernels.triton_utils import cdiv, next_power_of_2

    for n in [*range(0, 300), 1023, 1024, 1025, 65535, 65536, 65537, 2 ** 31 + 5]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 16, 64, 97, 128):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
