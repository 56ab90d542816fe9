"""A 1,280-token cut of the shipped Llama 3 tokenizer, for tests whose subject is not the tokenizer (GGUF logit
parity per family, rope variants, quantized files): the real pre-tokenizer, decoder, post-processor, special
tokens and chat template, with the 1,024 lowest-rank byte-level BPE tokens and the merges among them. A model
over it embeds 1,280 rows instead of 128,256, and its GGUF file carries ~1k merges instead of 280k, which makes
an export plus a llama.cpp load several times cheaper. The full tokenizer stays covered by test_tokenizer*.py,
test_writer.py and test_export.py's checkpoint test."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from slipstream.demo import TOKENIZER_DIR

KEEP = 1024            # byte-level BPE ranks kept: 0..1023 (a tiktoken-style vocab: every token's parts rank lower)
FIRST_SPECIAL = 128000  # Llama 3's 256 special tokens follow its BPE ranks; here they follow KEEP
VOCAB = KEEP + 256


def _special(old_id: int) -> int:
    return KEEP + old_id - FIRST_SPECIAL


def small_llama3(directory: Path):
    """The cut tokenizer, its files written to `directory` (from_pretrained reads them back)."""
    from transformers import AutoTokenizer
    with gzip.open(TOKENIZER_DIR / "tokenizer.json.gz", "rt", encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < KEEP}
    assert sorted(model["vocab"].values()) == list(range(KEEP))
    model["merges"] = [m for m in model["merges"]
                       if m[0] in model["vocab"] and m[1] in model["vocab"] and m[0] + m[1] in model["vocab"]]
    assert [t["id"] for t in tj["added_tokens"]] == list(range(FIRST_SPECIAL, FIRST_SPECIAL + 256))
    for token in tj["added_tokens"]:
        token["id"] = _special(token["id"])
    for entry in tj["post_processor"]["special_tokens"].values():
        entry["ids"] = [_special(i) for i in entry["ids"]]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TOKENIZER_DIR / name, directory / name)
    return AutoTokenizer.from_pretrained(directory)
