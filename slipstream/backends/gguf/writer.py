"""The GGUF writer: plan every tensor (name, shape, type) from shapes alone, write the header, then convert,
quantize and write the tensors one at a time, so peak memory is about one tensor plus the metadata.

The file appears atomically: everything goes to a hidden temp file in the target directory, renamed over the
target only after the last byte is written; any error (or Ctrl-C) removes the temp file and leaves an existing
target untouched. The container format is written by the `gguf` package (llama.cpp's own Python writer); the
tensor conversion and quantization are ours (quants.py).
"""
from __future__ import annotations

import os
import queue
import struct
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..permissions import as_if_created
from .arch import Arch, ExportError, extra_tensors, metadata, transform


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    hf_name: Optional[str]        # None for tensors GGUF adds (rope_freqs)
    shape: tuple[int, ...]
    qtype: Any                    # gguf.GGMLQuantizationType


def _fast_writer_class():
    """gguf.GGUFWriter packing long metadata arrays in bulk: the base class packs each of a 150k-token vocabulary's
    ~455k tokens, merges and types with its own struct call (2.8 s); the bytes are the same (tested). The per-item
    work here runs in C (map, zip, join): a Python loop or generator per item costs about as much as the base."""
    import gguf

    V = gguf.GGUFValueType
    numeric = {V.INT32: ("<i4", int), V.FLOAT32: ("<f4", float)}  # what get_type gives exactly these Python types
    pack_length = struct.Struct("<Q").pack

    class BulkWriter(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype != V.ARRAY or not isinstance(val, (list, tuple)) or len(val) < 256 \
                    or self.endianess != gguf.GGUFEndian.LITTLE:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            ltype = sub_type if sub_type is not None else V.get_type(val[0])
            kinds = set(map(type, val))
            if ltype == V.STRING and kinds == {str}:
                encoded = list(map(str.encode, val))  # UTF-8
                body = b"".join(chain.from_iterable(zip(map(pack_length, map(len, encoded)), encoded)))
            elif ltype in numeric and kinds == {numeric[ltype][1]}:
                body = np.asarray(val, dtype=numeric[ltype][0]).tobytes()
            else:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            head = struct.pack("<I", int(V.ARRAY)) if add_vtype else b""
            return head + struct.pack("<IQ", int(ltype), len(val)) + body

    return BulkWriter


def plan(source, arch: Arch, quant: str) -> list[PlannedTensor]:
    """Every tensor of the file in order, or ExportError naming the first checkpoint tensor GGUF has no name for."""
    import gguf

    from .quants import tensor_type

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], arch.n_layers)
    tied = bool(getattr(arch.config, "tie_word_embeddings", False))
    planned = []
    for hf_name in source.names():
        if tied and hf_name.endswith("lm_head.weight"):
            continue  # tied embeddings: llama.cpp reuses token_embd
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"checkpoint tensor {hf_name!r} has no {arch.name} GGUF name: this checkpoint is not "
                              f"a plain {arch.name} model (extra modules?); nothing was written")
        shape = source.shape(hf_name)
        qtype = tensor_type(gguf_name, shape, quant, arch.n_layers, tied_embeddings=tied)
        planned.append(PlannedTensor(gguf_name, hf_name, shape, qtype))
    for name, data in extra_tensors(arch).items():
        planned.append(PlannedTensor(name, None, data.shape, gguf.GGMLQuantizationType.F32))
    names = {t.gguf_name for t in planned}
    if "token_embd.weight" not in names:
        raise ExportError("the checkpoint has no token embedding (model.embed_tokens.weight): incomplete checkpoint")
    return planned


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write(path: str | Path, source, arch: Arch, quant: str, tokenizer_meta: list, extra_meta: dict[str, str],
          threads: int = 0, progress: bool = True) -> Path:
    """Write the GGUF file at `path` (atomically); returns the path."""
    import gguf

    from .quants import file_type

    path = Path(path)
    planned = plan(source, arch, quant)
    threads = threads or min(8, os.cpu_count() or 1)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    writer = None
    try:
        writer = _fast_writer_class()(tmp, arch.name)
        # general.name: llama.cpp keys some vocab fix-ups on it (e.g. "phi3" expects Phi-3's SentencePiece tokens),
        # so an unnamed in-memory model must not borrow its architecture's name
        writer.add_name(str(getattr(arch.config, "_name_or_path", "") or "model"))
        writer.add_file_type(file_type(quant))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for call in metadata(arch):
            call(writer)
        for key, value, vtype in tokenizer_meta:
            writer.add_key_value(key, value, vtype)
        for key, value in extra_meta.items():
            writer.add_string(key, value)
        for t in planned:
            writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.qtype), t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = _progress(planned, progress)
        extras = extra_tensors(arch)
        with ThreadPoolExecutor(max_workers=threads) as pool, BackgroundWrites(writer.write_tensor_data) as disk:
            for t in planned:
                data = torch.from_numpy(extras[t.gguf_name]) if t.hf_name is None else \
                    transform(arch, t.hf_name, source.load(t.hf_name))
                raw = _convert(data, t.qtype, pool)
                disk.put(raw)
                if bar is not None:
                    bar.set_postfix_str(f"{t.gguf_name} {t.qtype.name}", refresh=False)
                    bar.update(raw.nbytes)
        writer.close()
        writer = None
        if bar is not None:
            bar.close()
        as_if_created(tmp)
        os.replace(tmp, path)
        return path
    except BaseException:
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        Path(tmp).unlink(missing_ok=True)
        raise


_PIECE_ELEMENTS = 1 << 20  # elements one worker converts to fp32 and quantizes at a time (4 MB of fp32)


def _convert(data: "torch.Tensor", qtype, pool: ThreadPoolExecutor) -> np.ndarray:
    """Quantize a tensor (any float dtype) into its GGUF bytes. Whole rows are cut into pieces the pool's workers
    convert to fp32 and quantize on their own (numpy and torch release the GIL), so the fp32 copy of a large tensor
    (a 150k-token embedding) never exists whole; every block is quantized alone, so the bytes equal a one-pass
    quantization of the whole tensor."""
    import gguf

    from .quants import quantize

    direct = {gguf.GGMLQuantizationType.F32: torch.float32, gguf.GGMLQuantizationType.F16: torch.float16,
              gguf.GGMLQuantizationType.BF16: torch.bfloat16}
    if qtype in direct and data.is_floating_point():  # one torch cast (round to nearest even, like gguf's numpy)
        return data.to(direct[qtype]).contiguous().cpu().view(torch.uint8).numpy().reshape(-1)
    rows = data.detach().cpu().reshape(-1, data.shape[-1])
    step = max(1, _PIECE_ELEMENTS // rows.shape[1])
    out = np.empty(_nbytes(tuple(rows.shape), qtype), dtype=np.uint8).reshape(rows.shape[0], -1)

    def work(i: int) -> None:
        out[i:i + step] = quantize(rows[i:i + step].float().numpy(), qtype)
    list(pool.map(work, range(0, rows.shape[0], step)))
    return out.reshape(-1)


class BackgroundWrites:
    """Writes tensors' bytes in order on one thread, so the disk write of one tensor overlaps the conversion of the
    next; at most one converted tensor waits. A write error is raised in the caller (at its next `put` or on leaving
    the block), and leaving the block early (an error, Ctrl-C) stops the thread before the caller cleans up."""

    def __init__(self, write):
        self._write, self._queue, self._error = write, queue.Queue(maxsize=1), None
        self._thread = threading.Thread(target=self._run, name="gguf-writer", daemon=True)

    def __enter__(self) -> "BackgroundWrites":
        self._thread.start()
        return self

    def _run(self) -> None:
        while (raw := self._queue.get()) is not None:
            if self._error is None:  # after an error, drain the queue so the caller never blocks
                try:
                    self._write(raw)
                except BaseException as e:
                    self._error = e

    def put(self, raw: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(raw)

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def _progress(planned: list[PlannedTensor], enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    total = sum(_nbytes(t.shape, t.qtype) for t in planned)
    return tqdm(total=total, unit="B", unit_scale=True, desc="gguf", leave=False)
