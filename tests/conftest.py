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
    # pytest-xdist worker's opening batch (-n 2: the first eighth of the collection), so the serving overlaps the
    # rest of the suite on the other worker, which never waits. (xdist's --dist loadgroup would say this with a
    # mark, but it groups nothing under pytest 9.2, whose node ids no longer live where xdist 3.8 rewrites them.)
    # The other `slow` tests (minutes each) spread evenly over the first 80 % of the rest: xdist hands out
    # consecutive runs of the collection, so each run carries its share of them and none is left at the end of the
    # suite with one worker alone on it while the other idles.
    serving = [item for item in items if item.path.parent.name == "vllm_serve"]
    slow = [item for item in items if "slow" in item.keywords and item not in serving]
    rest = [item for item in items if "slow" not in item.keywords]
    step = max(1, int(0.8 * len(rest)) // max(1, len(slow)))
    spread = []
    for index, item in enumerate(rest):
        if index % step == 0 and slow:
            spread.append(slow.pop(0))
        spread.append(item)
    items[:] = serving + spread + slow
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
