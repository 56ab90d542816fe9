"""The tokenizers shipped with the tests (tests/data/tokenizers, slipstream/data/tokenizers) as directories that
AutoTokenizer loads: large files are stored gzipped."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path


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
