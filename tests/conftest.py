"""Test-wide settings: one thread (the machine is shared and small), Triton in interpreter mode on CPU."""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # read by triton when kernels are defined: set before any import

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # tests/models.py


def pytest_collection_modifyitems(config, items):
    # The vLLM-serving tests first. Their session fixture exports every checkpoint and serves them all in one vLLM
    # process, the longest single piece of the suite (tens of minutes on a slow 2-core machine), while a worker
    # holding another of them waits on its lock. First in the collection, all of them land in the first
    # pytest-xdist worker's opening batch (-n 2: a quarter of the suite), so the serving overlaps the rest of the
    # suite on the other worker, which never waits. (xdist's --dist loadgroup would say this with a mark, but it
    # groups nothing under pytest 9.2, whose node ids no longer live where xdist 3.8 rewrites them.)
    items.sort(key=lambda item: item.path.parent.name != "vllm_serve")  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
