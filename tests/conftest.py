"""Test-wide settings: one thread (the machine is shared and small), Triton in interpreter mode on CPU."""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # read by triton when kernels are defined: set before any import

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # tests/models.py


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
