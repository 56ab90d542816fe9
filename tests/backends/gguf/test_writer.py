"""The writer's fast paths produce the bytes of the slow ones: bulk-packed metadata arrays (vs the gguf package's
own packing) and torch casts for F32/F16/BF16 (vs our numpy quantizers)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import gguf

from slipstream.backends.gguf.quants import quantize  # noqa: E402
from slipstream.backends.gguf.tokenizer import tokenizer_metadata  # noqa: E402
from slipstream.backends.gguf.writer import _convert, _fast_writer_class  # noqa: E402


def test_bulk_metadata_packing_is_byte_identical(shipped_tokenizer, tmp_path):
    meta = tokenizer_metadata(shipped_tokenizer("llama3")[1])
    meta.append(("test.floats", [0.5, -1.25] * 300, gguf.GGUFValueType.ARRAY))
    files = []
    for name, cls in (("base", gguf.GGUFWriter), ("bulk", _fast_writer_class())):
        writer = cls(tmp_path / f"{name}.gguf", "llama")
        for key, value, vtype in meta:
            writer.add_key_value(key, value, vtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        files.append((tmp_path / f"{name}.gguf").read_bytes())
    assert files[0] == files[1] and len(files[0]) > 1_000_000


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_direct_float_casts_equal_the_quantizers(qtype, dtype):
    x = (torch.randn(300, 64) * 3).to(dtype)
    q = gguf.GGMLQuantizationType[qtype]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = _convert(x, q, pool)
    assert np.array_equal(got, quantize(x.float().numpy(), q).reshape(-1).view(np.uint8))
