"""The shipped full-size tokenizers, loaded once per test process: AutoTokenizer spends seconds on Llama 3's or Qwen2's
tokenizer.json (128k / 152k tokens, 280k / 151k merges) each time, and the tests only read them."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from slipstream.gc_pause import load_auto_tokenizer
from tokenizer_files import unpack

QWEN2_DIR = Path(__file__).resolve().parents[1] / "data" / "tokenizers" / "qwen2"


@pytest.fixture(scope="session")
def shipped_tokenizer(tmp_path_factory):
    """shipped_tokenizer(name) -> (folder, AutoTokenizer) for "llama3" (the demo's: slipstream.demo.load_tokenizer)
    or "qwen2" (tests/data), each loaded on first use. Shared by every test of the process: never modify either."""
    from slipstream.demo import load_tokenizer, tokenizer_path

    @functools.cache
    def load(name: str):
        if name == "llama3":
            return tokenizer_path(), load_tokenizer()
        folder = unpack(QWEN2_DIR, tmp_path_factory.mktemp(name))
        return folder, load_auto_tokenizer(folder)

    return load
