"""Small cuts of the shipped byte-level BPE tokenizers (Llama 3, Qwen2), for tests whose subject is not the size of
the vocabulary (GGUF logit parity per family, rope variants, quantized files, tokenizer-file variants): the real
pre-tokenizer, decoder, post-processor, special tokens and chat template, with the `keep` lowest-rank BPE tokens
and the merges among them, the special tokens renumbered to follow them. A model over the Llama 3 cut embeds 1,280
rows instead of 128,256 and its GGUF file carries ~1k merges instead of 280k, which makes an export plus a
llama.cpp load several times cheaper. The full tokenizers stay covered by test_tokenizer.py, test_writer.py,
test_tokenizer_files.py's shipped-tokenizer test and test_export.py's checkpoint test."""
from __future__ import annotations

from pathlib import Path

from slipstream.demo import TOKENIZER_DIR
from tokenizer_files import edit_json, unpack

KEEP = 1024    # BPE ranks kept (a tiktoken-style vocabulary: every token's parts rank lower than it)
VOCAB = KEEP + 256  # the Llama 3 cut: its 256 special tokens follow the kept ranks


def cut_tokenizer(src: Path, dst: Path, keep: int = KEEP) -> Path:
    """Write to `dst` the tokenizer folder `src` (its large files possibly gzipped) cut to its `keep` lowest BPE
    ranks, added tokens renumbered from `keep` on in their order; returns dst."""
    unpack(src, dst)
    renumber = {}

    def cut(tj: dict) -> None:
        model = tj["model"]
        vocab = model["vocab"] = {t: i for t, i in model["vocab"].items() if i < keep}
        assert sorted(vocab.values()) == list(range(keep))
        model["merges"] = [m for m in model["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
        renumber.update({t["id"]: keep + n for n, t in enumerate(tj["added_tokens"])})
        assert min(renumber) >= keep, "added tokens among the kept BPE ranks are not supported by the cut"
        for token in tj["added_tokens"]:
            token["id"] = renumber[token["id"]]
        processors = [tj.get("post_processor") or {}]
        processors += processors[0].get("processors", [])
        for processor in processors:
            for entry in processor.get("special_tokens", {}).values():
                entry["ids"] = [renumber[i] for i in entry["ids"]]

    def renumber_config(config: dict) -> None:
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(renumber[int(i)]): t
                                              for i, t in config["added_tokens_decoder"].items()}

    edit_json(dst / "tokenizer.json", cut)
    edit_json(dst / "tokenizer_config.json", renumber_config)
    return dst


def small_llama3(directory: Path):
    """The Llama 3 cut (VOCAB tokens) as a transformers tokenizer, its files written to `directory`."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(cut_tokenizer(TOKENIZER_DIR, directory))
