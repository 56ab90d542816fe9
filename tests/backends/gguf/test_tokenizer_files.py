"""The tokenizer read from a checkpoint's files (tokenizer_files.py) gives the GGUF metadata AutoTokenizer gives, for
the shipped Llama 3 and Qwen2 tokenizers and for variants of their files (templates in every place transformers
reads them, special tokens from special_tokens_map.json, a post-processor adding EOS); files whose transformers
semantics it does not reproduce are handed back with the reason; a checkpoint export never imports transformers.
The variants start from 1,024-rank cuts of the shipped tokenizers (small_tokenizer.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from small_tokenizer import KEEP, cut_tokenizer
from tokenizer_files import edit_json, unpack

from slipstream.backends.gguf.tokenizer import tokenizer_metadata
from slipstream.backends.gguf.tokenizer_files import open_tokenizer_files

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = {"llama3": ROOT / "slipstream" / "data" / "tokenizers" / "llama3", "qwen2": ROOT / "tests" / "data" /
           "tokenizers" / "qwen2"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("small-tokenizers")
    return {name: cut_tokenizer(src, base / name) for name, src in SHIPPED.items()}


def _copy(src: Path, dst: Path) -> Path:
    return unpack(src, dst)  # a plain copy (nothing is gzipped in an unpacked folder)


def _assert_same_metadata(folder: Path, theirs=None, vocab_sizes=(None,)) -> None:
    """theirs: AutoTokenizer's tokenizer of `folder` when already loaded."""
    ours, why = open_tokenizer_files(folder)
    assert ours is not None, why
    if theirs is None:
        theirs = AutoTokenizer.from_pretrained(folder)
    for size in vocab_sizes:
        assert tokenizer_metadata(ours, vocab_size=size) == tokenizer_metadata(theirs, vocab_size=size), size


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_tokenizers_give_autotokenizers_metadata(name, shipped_tokenizer):
    folder, theirs = shipped_tokenizer(name)
    _assert_same_metadata(folder, theirs, vocab_sizes=(None, 160_000))  # as is, and padded with unused tokens


def test_chat_templates_from_every_place_transformers_reads(small, tmp_path):
    folder = _copy(small["qwen2"], tmp_path / "list")
    (folder / "chat_template.jinja").unlink()
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(chat_template=[
        {"name": "default", "template": "{{ messages[0]['content'] }}"}, {"name": "tool_use", "template": "T"}]))
    _assert_same_metadata(folder)
    folder = _copy(small["qwen2"], tmp_path / "dir")                      # chat_template.jinja + extra files
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "rag.jinja").write_text("R{{ x }}")
    _assert_same_metadata(folder)
    ours, _ = open_tokenizer_files(folder)
    assert set(ours.chat_template) == {"default", "rag"}


def test_special_tokens_map_and_an_eos_adding_post_processor(small, tmp_path):
    folder = _copy(small["llama3"], tmp_path / "eos")
    edit_json(folder / "tokenizer_config.json", lambda c: c.pop("pad_token"))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|reserved_special_token_0|>"}))

    def add_eos(tj):  # Llama 3's BOS template, now adding EOS too, behind a ByteLevel step (a Sequence)
        template = tj["post_processor"]
        template["single"].append({"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}})
        template["special_tokens"]["<|end_of_text|>"] = {"id": "<|end_of_text|>", "ids": [KEEP + 1],
                                                         "tokens": ["<|end_of_text|>"]}
        tj["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}, template]}
    edit_json(folder / "tokenizer.json", add_eos)
    _assert_same_metadata(folder)
    ours, _ = open_tokenizer_files(folder)
    # Llama 3's first specials, renumbered by the cut: <|begin_of_text|>, <|end_of_text|>, reserved 0
    assert ours.special_affixes() == ([KEEP], [KEEP + 1]) and ours.pad_token_id == KEEP + 2


@pytest.mark.parametrize("change,reason", [
    (lambda c, t: c.update(tokenizer_class="LlamaTokenizerFast"), "tokenizer_class 'LlamaTokenizerFast'"),
    (lambda c, t: c.update(add_bos_token=True), "overrides the post-processor"),
    (lambda c, t: c.update(eos_token="hello"), "'hello' is not a special added token"),
    (lambda c, t: c.update(added_tokens_decoder={str(KEEP): {"content": "<|x|>", "special": True}}),
     f"added token {KEEP} differs"),
    (lambda c, t: c.update(additional_special_tokens=["abc"]), "additional special token 'abc'"),
    (lambda c, t: t.update(post_processor={"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]}),
     "post-processor 'RobertaProcessing'"),
    (lambda c, t: t["model"].update(type="WordPiece"), "not a byte-level BPE"),
], ids=["class", "add_bos", "special-not-added", "added-mismatch", "additional-special", "roberta", "wordpiece"])
def test_files_transformers_would_read_differently_are_handed_back(change, reason, small, tmp_path):
    folder = _copy(small["qwen2"], tmp_path / "t")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    change(config, tj)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    ours, why = open_tokenizer_files(folder)
    assert ours is None and reason in why


def test_checkpoint_export_never_imports_transformers(small, tmp_path):
    """The point of both readers: `slipstream export gguf <checkpoint>` runs without transformers (~5 s of import
    and tokenizer loading on a 2-core machine)."""
    import models

    ckpt = _copy(small["qwen2"], tmp_path / "ckpt")
    tokens = KEEP + len(json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"])
    model = models.build("qwen2", vocab_size=-(-tokens // 64) * 64)  # padded to a multiple of 64, as Qwen2 is
    model.save_pretrained(ckpt)
    code = ("import sys, slipstream; slipstream.export(sys.argv[1], sys.argv[2], quant='q8_0', progress=False); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'tokenizers')))")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "m.gguf")], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
    weights = sum(p.numel() for p in model.parameters())  # one byte each in Q8_0 (plus scales), F32 for norms
    assert (tmp_path / "m.gguf").stat().st_size > weights
