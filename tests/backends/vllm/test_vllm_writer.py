"""The directory appears whole or not at all: existing targets refused unless overwrite=True, an interrupted write
(an error or Ctrl-C mid-shard) leaves no target and no temp files, a failed overwrite keeps the old directory; the
streamed shards are plain safetensors; bad options get clear errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import slipstream
from slipstream.backends.errors import ExportError
from slipstream.backends.vllm import writer
from slipstream.backends.vllm.writer import Planned, parse_size, write_shard
from vllm_helpers import build

pytestmark = pytest.mark.filterwarnings("ignore:vLLM export without a tokenizer")


def test_streamed_shard_is_plain_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int32), "c": torch.randn(2, 2).bfloat16(),
               "d": torch.randn(4, 4).to(torch.float8_e4m3fn), "e": torch.tensor([4, 6])}
    planned = [Planned(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    write_shard(tmp_path / "x.safetensors", planned, lambda t: tensors[t.name])
    back = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k].view(torch.uint8), v.view(torch.uint8)) for k, v in tensors.items())


def test_a_tensor_off_its_plan_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="internal error: a came out"):
        write_shard(tmp_path / "x.safetensors", [Planned("a", torch.float32, (2,))], lambda t: torch.zeros(3))


def test_existing_target_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous")
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        slipstream.export(build("llama"), tmp_path / "out", format="vllm")
    assert (tmp_path / "out" / "keep.txt").read_text() == "previous"
    slipstream.export(build("llama"), tmp_path / "out", format="vllm", overwrite=True, progress=False)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError(28, "No space left on device")], ids=["ctrl-c", "disk"])
def test_interrupted_write_leaves_nothing(error, tmp_path, monkeypatch):
    calls = []
    original = writer.write_shard

    def failing(path, tensors, produce, on_written=lambda t: None):
        def produce_then_fail(t):
            calls.append(t.name)
            if len(calls) > 5:
                raise error
            return produce(t)
        return original(path, tensors, produce_then_fail, on_written)

    monkeypatch.setattr(writer, "write_shard", failing)
    with pytest.raises(type(error) if isinstance(error, BaseException) else error):
        slipstream.export(build("llama"), tmp_path / "out", format="vllm", quant="w4a16", shard_size="50KB",
                          progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous")
    calls.clear()
    with pytest.raises(type(error) if isinstance(error, BaseException) else error):
        slipstream.export(build("llama"), tmp_path / "out", format="vllm", overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_bad_options(tmp_path):
    model = build("llama")
    with pytest.raises(ValueError, match="unknown vLLM quant scheme 'int3'; choose one of: None.*w4a16"):
        slipstream.export(model, tmp_path / "x", format="vllm", quant="int3")
    with pytest.raises(ValueError, match="shard_size 'lots' is not a size"):
        slipstream.export(model, tmp_path / "x", format="vllm", shard_size="lots")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        slipstream.export(model, tmp_path / "x", format="vllm", dtype="int8")
    with pytest.raises(ExportError, match="does not exist; create it first"):
        slipstream.export(model, tmp_path / "missing" / "x", format="vllm")
    with pytest.raises(ExportError, match="not a multiple of the int4 group size 128"):
        slipstream.export(build("llama", hidden_size=64, intermediate_size=128), tmp_path / "x", format="vllm",
                          quant="w4a16")
    with pytest.raises(ValueError, match="vLLM export options"):
        slipstream.export(model, tmp_path / "x.gguf", format="gguf", overwrite=True)
    assert list(tmp_path.iterdir()) == []
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1GiB") == 2**30 and parse_size(1000) == 1000
    assert parse_size("123") == 123
