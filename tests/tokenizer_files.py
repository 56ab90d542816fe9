"""The tokenizers shipped with the tests (tests/data/tokenizers, slipstream/data/tokenizers) as directories that
AutoTokenizer loads: large files are stored gzipped."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from slipstream.backends.gguf.tokenizer_files import parse_json


def unpack(src: Path, dst: Path) -> Path:
    """Copy the tokenizer folder `src` to `dst`, decompressing its *.gz files; returns dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.endswith(".gz"):
            with gzip.open(f, "rb") as fin, open(dst / f.name[:-3], "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def edit_json(path: Path, change) -> None:
    """Apply `change` (which edits the parsed dict in place) to the JSON file at `path`."""
    data = parse_json(path.read_text(encoding="utf-8"))  # not json.loads: ~8x faster on a full tokenizer.json
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
