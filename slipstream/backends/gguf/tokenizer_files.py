"""A checkpoint's byte-level BPE tokenizer read straight from its files, for GGUF export without transformers.

Loading a tokenizer through AutoTokenizer costs ~5 s (importing transformers, building the Rust tokenizer, then
serialising it back to JSON for us to read); the GGUF metadata needs only what tokenizer.json, tokenizer_config.json
(+ special_tokens_map.json) and the chat template files say. `open_tokenizer_files` reads them for the cases whose
transformers semantics are plain: a fast tokenizer class that adds no special tokens of its own
(`PreTrainedTokenizerFast`, Qwen2's), every special token already a special added token, added tokens declared
consistently, and a post-processor that is absent, ByteLevel or a template (the BOS/EOS it adds are read off it).
Anything else returns None with the reason and the caller loads AutoTokenizer: the result is the same, only
slower. tests/backends/gguf/test_tokenizer_files.py checks the metadata equals AutoTokenizer's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from slipstream.gc_pause import gc_paused

# tokenizer_class -> the special-token defaults of its __init__ (transformers 4.57)
_CLASSES = {
    "PreTrainedTokenizerFast": {},
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "Qwen2TokenizerFast": {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                           "pad_token": "<|endoftext|>"},
}
SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "mask_token")
_TEMPLATE_DIR = "additional_chat_templates"


class AddedToken(NamedTuple):
    content: str
    special: bool


class TokenizerFiles:
    """The parts of a transformers tokenizer `tokenizer_metadata` reads, from parsed files."""

    def __init__(self, path: Path, tokenizer_json: dict, added: dict[int, AddedToken], specials: dict[str, int | None],
                 affixes: tuple[list[int], list[int]], chat_template: str | dict | None):
        self.name_or_path = str(path)
        self.tokenizer_json = tokenizer_json
        self.added_tokens_decoder = added
        self.chat_template = chat_template
        self._affixes = affixes
        for key, value in specials.items():
            setattr(self, f"{key}_id", value)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self.tokenizer_json["model"]["vocab"])
        vocab.update({t.content: i for i, t in self.added_tokens_decoder.items()})
        return vocab

    def special_affixes(self) -> tuple[list[int], list[int]]:
        """The ids encoding adds before and after a single text (what `encode(..., add_special_tokens=True)` adds)."""
        return self._affixes


def open_tokenizer_files(path: str | Path) -> tuple[TokenizerFiles | None, str]:
    """(the tokenizer, "") or (None, why it must be loaded through transformers)."""
    path = Path(path)
    config = _json(path / "tokenizer_config.json")
    if config is None or not (path / "tokenizer.json").is_file():
        return None, "no tokenizer_config.json + tokenizer.json pair"
    cls = config.get("tokenizer_class")
    if cls not in _CLASSES:
        return None, f"tokenizer_class {cls!r} may add special tokens of its own"
    if any(config.get(k) is not None for k in ("add_bos_token", "add_eos_token", "add_prefix_space")):
        return None, "tokenizer_config.json overrides the post-processor or pre-tokenizer"
    tj = _json(path / "tokenizer.json")
    model, decoder = (tj or {}).get("model") or {}, (tj or {}).get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel" or not isinstance(model.get("vocab"), dict):
        return None, "not a byte-level BPE tokenizer.json"
    added = {int(t["id"]): AddedToken(t["content"], bool(t.get("special"))) for t in tj.get("added_tokens") or []}
    special_ids = {t.content: i for i, t in added.items() if t.special}
    why = _check_added(config, added, special_ids)
    if why:
        return None, why
    specials = _specials(path, config)
    missing = [v for v in specials.values() if v is not None and v not in special_ids]
    if missing:
        return None, f"special token {missing[0]!r} is not a special added token (transformers would make it one)"
    affixes = _affixes(tj.get("post_processor"))
    if affixes is None:
        return None, f"post-processor {(tj.get('post_processor') or {}).get('type')!r}"
    ids = {k: (special_ids[v] if v is not None else None) for k, v in specials.items()}
    return TokenizerFiles(path, tj, added, ids, affixes, _chat_template(path, config)), ""


def parse_json(text: str):
    """json.loads without the garbage collector's rescans (slipstream/gc_pause.py): ~8x faster on a tokenizer.json."""
    with gc_paused():
        return json.loads(text)


def _json(path: Path):
    if not path.is_file():
        return None
    return parse_json(path.read_text(encoding="utf-8"))


def _content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _check_added(config: dict, added: dict[int, AddedToken], special_ids: dict[str, int]) -> str:
    """tokenizer_config.json may redeclare added tokens; they must say what tokenizer.json says."""
    for key, t in (config.get("added_tokens_decoder") or {}).items():
        have = added.get(int(key))
        if have is None or have.content != t.get("content") or have.special != bool(t.get("special")):
            return f"added token {key} differs between tokenizer.json and tokenizer_config.json"
    for t in config.get("additional_special_tokens") or []:
        if _content(t) not in special_ids:
            return f"additional special token {_content(t)!r} is not a special added token of tokenizer.json"
    return ""


def _specials(path: Path, config: dict) -> dict[str, str | None]:
    """Special tokens as transformers resolves them: tokenizer_config.json, else special_tokens_map.json, else the
    class default."""
    mapping = _json(path / "special_tokens_map.json") or {}
    defaults = _CLASSES[config["tokenizer_class"]]
    out = {}
    for key in SPECIALS:
        value = config[key] if key in config else mapping.get(key, defaults.get(key))
        out[key] = _content(value)
    return out


def _affixes(processor: dict | None) -> tuple[list[int], list[int]] | None:
    """Ids a post-processor puts around a single sequence; None for one we do not read."""
    if processor is None or processor.get("type") == "ByteLevel":
        return [], []
    if processor.get("type") == "Sequence":
        parts = [_affixes(p) for p in processor.get("processors") or []]
        if any(p is None for p in parts) or sum(bool(p[0] or p[1]) for p in parts) > 1:
            return None
        return next(((pre, post) for pre, post in parts if pre or post), ([], []))
    if processor.get("type") != "TemplateProcessing":
        return None
    specials, before, after, seen = processor.get("special_tokens") or {}, [], [], False
    for piece in processor.get("single") or []:
        if "Sequence" in piece:
            seen = True
        elif "SpecialToken" in piece:
            ids = (specials.get(piece["SpecialToken"]["id"]) or {}).get("ids")
            if ids is None:
                return None
            (after if seen else before).extend(int(i) for i in ids)
        else:
            return None
    return (before, after) if seen else None


def _chat_template(path: Path, config: dict) -> str | dict | None:
    """chat_template.jinja and additional_chat_templates/*.jinja take priority over tokenizer_config.json's."""
    templates = {}
    if (path / "chat_template.jinja").is_file():
        templates["default"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / _TEMPLATE_DIR).is_dir():
        for f in sorted((path / _TEMPLATE_DIR).glob("*.jinja")):
            templates[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    template = config.get("chat_template")
    if isinstance(template, list):
        return {t["name"]: t["template"] for t in template}
    return template
