"""Golden files: compared byte for byte, rewritten only when SLIPSTREAM_UPDATE_GOLDEN=1 is set (then the test
fails once more, saying so, so an update is never silent)."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SLIPSTREAM_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
        pytest.fail(f"golden file {path} rewritten (SLIPSTREAM_UPDATE_GOLDEN=1): review the diff and rerun without it")
    assert path.is_file(), f"missing golden file {path}: create it with SLIPSTREAM_UPDATE_GOLDEN=1"
    want = path.read_text(encoding="utf-8")
    if text != want:
        changes = "\n".join(difflib.unified_diff(want.splitlines(), text.splitlines(), "golden", "now", lineterm=""))
        pytest.fail(f"graph diff differs from {path}; if the change is intended, rerun with "
                    f"SLIPSTREAM_UPDATE_GOLDEN=1 and review `git diff tests/golden`:\n{changes[:4000]}")
