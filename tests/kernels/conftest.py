"""Kernel tests run the Triton kernels on CPU under the Triton interpreter.

TRITON_INTERPRET must be in the environment before anything imports slipstream's `triton_*` modules:
`@triton.jit` reads it when it decorates (see slipstream/kernels/dispatch.py). conftest runs before test modules.
"""
import importlib.util
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))  # kernel_testing.py, under any pytest import mode
if importlib.util.find_spec("slipstream") is None:  # not installed: test the checkout
    sys.path.insert(0, str(_HERE.parents[1]))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
