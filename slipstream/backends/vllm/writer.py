"""Streaming safetensors shards and the atomic directory they go into.

A shard's header (every tensor's name, dtype, shape and byte range) is written from the plan before any tensor is
computed; the tensors then follow one at a time, so peak memory is about one tensor (plus its quantized form),
whatever the model size. The bytes are the safetensors format: 8-byte little-endian header length, the JSON header
(with `__metadata__: {"format": "pt"}`, padded with spaces to 8 bytes), the raw little-endian tensor data.

`staging(target, overwrite)` gives a hidden temp directory next to `target`; on success it is renamed to `target`
(an existing one, only with overwrite=True, is moved aside first and deleted after the rename); on any exception,
Ctrl-C included, the temp directory is removed and an existing target is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from slipstream.backends.errors import ExportError
from slipstream.backends.permissions import as_if_created

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
           torch.float8_e4m3fn: "F8_E4M3", torch.bool: "BOOL"}


@dataclass(frozen=True)
class Planned:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()


def header(tensors: list[Planned]) -> bytes:
    """The safetensors header (length prefix included) for `tensors` laid out in order."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        meta[t.name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_shard(path: Path, tensors: list[Planned], produce: Callable[[Planned], torch.Tensor],
                on_written: Callable[[Planned], None] = lambda t: None) -> None:
    """Write one safetensors file; `produce(t)` gives each tensor's data, checked against its plan."""
    with open(path, "wb") as f:
        f.write(header(tensors))
        for t in tensors:
            data = produce(t)
            if data.dtype != t.dtype or tuple(data.shape) != t.shape:
                raise ExportError(f"internal error: {t.name} came out {data.dtype} {tuple(data.shape)}, planned "
                                  f"{t.dtype} {t.shape}; nothing was written")
            f.write(memoryview(data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            on_written(t)


def shard(tensors: list[Planned], shard_size: int) -> list[list[Planned]]:
    """Greedy, in order: a new shard whenever the next tensor would pass `shard_size` bytes (a larger tensor alone)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "500MB", "2GB", "1GiB"."""
    if isinstance(size, int) and size > 0:
        return size
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    text = str(size).strip().upper()
    if text.isdigit() and int(text) > 0:
        return int(text)
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * factor)
    raise ValueError(f"shard_size {size!r} is not a size: give bytes (an int) or e.g. '500MB', '2GB'")


def check_target(target: Path, overwrite: bool) -> None:
    if not target.parent.is_dir():
        raise ExportError(f"{target.parent} does not exist; create it first")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it, or pick a new "
                          "directory")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory; remove it or pick another path")


@contextlib.contextmanager
def staging(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temp directory that becomes `target` when the block succeeds and vanishes when it fails."""
    check_target(target, overwrite)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        yield tmp
        as_if_created(tmp)
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        try:
            if target.exists():
                os.replace(target, old / "previous")
            try:
                os.replace(tmp, target)
            except BaseException:
                if (old / "previous").exists():
                    os.replace(old / "previous", target)
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

