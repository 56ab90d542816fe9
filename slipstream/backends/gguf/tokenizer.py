"""The tokenizer part of a GGUF file: the `tokenizer.*` keys llama.cpp reads, made from a transformers tokenizer.

Two vocabulary kinds are written, each only when llama.cpp will tokenize exactly as the source tokenizer does:

* byte-level BPE (a `tokenizers` fast tokenizer whose pre-tokenizer ends in ByteLevel and whose decoder is
  ByteLevel: Llama 3, Qwen2/2.5/3, GPT-2, ...) -> `tokenizer.ggml.model = "gpt2"` with the merges and a
  `tokenizer.ggml.pre` name. llama.cpp does not read the split regex from the file: it picks a hard-coded
  pre-tokenizer by that name, so the name is chosen by comparing the tokenizer's own split regex(es) with the
  ones llama.cpp implements (`_KNOWN_PRE`); an unknown pre-tokenizer is an error, never a silent default.
* SentencePiece BPE (a `tokenizer.model` next to the tokenizer: Llama 2, Mistral v1, Gemma, ...) -> `"llama"`
  with the real scores and piece types read from the model proto (llama.cpp merges by piece score, so the
  scores matter). sentencepiece_proto.py parses the proto (a few dozen lines of protobuf wire format), so
  neither the `sentencepiece` nor the `protobuf` package is needed.

Everything else (WordPiece, Unigram, byte-fallback BPE without its tokenizer.model, a normalizer llama.cpp
does not apply, ...) raises ValueError naming what was found and the way out.

Token types follow llama.cpp's convention (convert_hf_to_gguf.py): 1 normal, 2 unknown, 3 control,
4 user-defined, 5 unused, 6 byte. Ids the tokenizer does not define (an embedding padded past the vocabulary)
become "[PAD<id>]" tokens of type unused.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

from gguf import GGUFValueType, Keys, TokenType

from .sentencepiece_proto import SentencePieceModel, read_sentencepiece_model
from .tokenizer_files import parse_json

__all__ = ["MetaField", "tokenizer_metadata", "add_to_writer", "as_dict", "bpe_pre_name",
           "SentencePieceModel", "read_sentencepiece_model"]


class MetaField(NamedTuple):
    """One GGUF key: `writer.add_key_value(key, value, type)`. Arrays hold plain Python str / int / float
    items, from which the gguf writer infers the element type (STRING, INT32, FLOAT32) that llama.cpp expects."""
    key: str
    value: Any
    type: GGUFValueType


def as_dict(fields: list[MetaField]) -> dict[str, MetaField]:
    return {f.key: f for f in fields}


def add_to_writer(writer, fields: list[MetaField]) -> None:
    """Add every field to a `gguf.GGUFWriter` (before `write_header_to_file`)."""
    for key, value, vtype in fields:
        writer.add_key_value(key, value, vtype)


# --------------------------------------------------------------------------------------------------------------
# byte-level BPE pre-tokenizers llama.cpp knows
# --------------------------------------------------------------------------------------------------------------

# The split regexes exactly as they appear in tokenizer.json (Split pre-tokenizer, behavior Isolated).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# ByteLevel(use_regex=True) splits with the GPT-2 regex built into `tokenizers`.
_GPT2_BUILTIN = "<ByteLevel use_regex=True: the GPT-2 regex>"


@dataclass(frozen=True)
class _Pre:
    name: str                        # the tokenizer.ggml.pre value
    normalizers: frozenset = frozenset({None})  # tokenizer.json normalizer types accepted with it
    note: str = ""


# (split regexes in order, including _GPT2_BUILTIN for a ByteLevel that splits; BPE ignore_merges) -> the
# llama.cpp pre-tokenizer doing the same. ignore_merges (look a pre-token up in the vocabulary before merging)
# is part of the choice because llama.cpp ties it to the name: "llama-bpe" sets it, "smaug-bpe" (same regex)
# does not, and Llama 3 tokenizes e.g. " Việt" differently with and without it.
# Each entry is checked by tests/backends/gguf/test_tokenizer.py: llama.cpp (vocab-only GGUF written by us)
# must tokenize llama.cpp's own test strings exactly as transformers does.
_KNOWN_PRE: dict[tuple[tuple[str, ...], bool], _Pre] = {
    ((_LLAMA3_REGEX,), True): _Pre("llama-bpe", note="Llama 3 / 3.1 / 3.2, ignore_merges=true"),
    ((_LLAMA3_REGEX,), False): _Pre("smaug-bpe", note="the Llama 3 regex with ignore_merges=false"),
    # Qwen2's published tokenizer.json has an NFC normalizer; llama.cpp's "qwen2" does not normalize, which
    # only matters for text that is not already NFC (llama.cpp's own converter makes the same choice).
    ((_QWEN2_REGEX,), False): _Pre("qwen2", normalizers=frozenset({None, "NFC"}), note="Qwen1.5 / 2 / 2.5 / 3"),
    ((_GPT2_BUILTIN,), False): _Pre("gpt-2", note="GPT-2 and other plain ByteLevel(use_regex=True) tokenizers"),
}


def _describe_steps(steps: list[str]) -> str:
    described = [f"regex '{s}'" if s != _GPT2_BUILTIN else "ByteLevel(use_regex=True)" for s in steps]
    return " + ".join(described) or "(none)"


def _split_steps(pre: dict | None) -> list[str]:
    """The split regexes of a byte-level pre-tokenizer, in order; ValueError for anything else."""
    if pre is None:
        raise ValueError("byte-level BPE tokenizer without a pre-tokenizer: llama.cpp always pre-tokenizes, "
                         "so it cannot reproduce this tokenizer")
    items = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    steps: list[str] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "Split":
            pattern = item.get("pattern") or {}
            if "Regex" not in pattern or item.get("behavior") != "Isolated" or item.get("invert"):
                raise ValueError(f"unsupported Split pre-tokenizer {json.dumps(item)} (llama.cpp implements "
                                 "only regex splits with behavior 'Isolated', invert false)")
            steps.append(pattern["Regex"])
        elif kind == "ByteLevel":
            if i != len(items) - 1:
                raise ValueError(f"unsupported pre-tokenizer: ByteLevel is not the last step of {json.dumps(pre)}")
            if item.get("add_prefix_space"):
                raise ValueError("unsupported pre-tokenizer: ByteLevel(add_prefix_space=True) adds a space "
                                 "llama.cpp's BPE tokenizer never adds")
            if item.get("use_regex", True):
                steps.append(_GPT2_BUILTIN)
        else:
            raise ValueError(f"unsupported pre-tokenizer step {kind!r} in {json.dumps(pre)[:300]}: llama.cpp's "
                             "byte-level BPE tokenizer only applies split regexes")
    if not items or items[-1].get("type") != "ByteLevel":
        raise ValueError(f"pre-tokenizer {json.dumps(pre)[:300]} does not end with ByteLevel: not a byte-level BPE")
    return steps


def bpe_pre_name(tokenizer_json: dict) -> str:
    """The llama.cpp `tokenizer.ggml.pre` name for a byte-level BPE tokenizer.json, or ValueError naming the
    pre-tokenizer found when llama.cpp (as far as this exporter verified) has no identical one."""
    steps = _split_steps(tokenizer_json.get("pre_tokenizer"))
    ignore_merges = bool((tokenizer_json.get("model") or {}).get("ignore_merges"))
    known = _KNOWN_PRE.get((tuple(steps), ignore_merges))
    if known is None:
        names = ", ".join(f"{p.name} ({p.note})" for p in _KNOWN_PRE.values())
        raise ValueError(
            f"unrecognised byte-level BPE pre-tokenizer: split by {_describe_steps(steps)}, "
            f"ignore_merges={str(ignore_merges).lower()}. llama.cpp selects its "
            f"pre-tokenizer by name (tokenizer.ggml.pre) and this exporter knows only the verified ones: {names}. "
            "Writing another name would silently change tokenization. Way out: find the llama.cpp pre-tokenizer "
            "with exactly this regex (src/llama-vocab.cpp), add it to _KNOWN_PRE in "
            "slipstream/backends/gguf/tokenizer.py and verify it with tests/backends/gguf/test_tokenizer.py")
    normalizer = tokenizer_json.get("normalizer")
    ntype = normalizer.get("type") if normalizer else None
    if ntype not in known.normalizers:
        raise ValueError(f"byte-level BPE tokenizer with a {ntype} normalizer ({json.dumps(normalizer)[:200]}): "
                         f"llama.cpp's {known.name!r} pre-tokenizer does not normalize, so it would tokenize "
                         "differently")
    return known.name


# --------------------------------------------------------------------------------------------------------------
# the metadata
# --------------------------------------------------------------------------------------------------------------

_WAY_OUT = ("this exporter writes byte-level BPE (GGUF 'gpt2': Llama 3, Qwen2, GPT-2 style) and SentencePiece "
            "BPE with its tokenizer.model (GGUF 'llama': Llama 2, Mistral, Gemma style) vocabularies")


def tokenizer_metadata(tokenizer, chat_template: str | dict | None = None, *,
                       vocab_size: int | None = None) -> list[MetaField]:
    """The `tokenizer.*` GGUF keys for a transformers tokenizer.

    vocab_size: rows of the model's embedding (config.vocab_size) when it is larger than the tokenizer; the
    extra ids become unused "[PAD<id>]" tokens (llama.cpp needs one token per embedding row).
    chat_template: defaults to `tokenizer.chat_template`; a dict of named templates writes the "default" one
    as tokenizer.chat_template and the others as tokenizer.chat_template.<name>.
    """
    vocab = tokenizer.get_vocab()
    n_tok = max(vocab.values()) + 1 if vocab else 0
    if vocab_size is None:
        vocab_size = n_tok
    elif vocab_size < n_tok:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {n_tok} ids: the model "
                         "cannot embed every token")

    tokenizer_json = _backend_json(tokenizer)
    model = (tokenizer_json or {}).get("model") or {}
    decoder = (tokenizer_json or {}).get("decoder") or {}
    if model.get("type") == "BPE" and decoder.get("type") == "ByteLevel":
        fields = _byte_level_bpe(tokenizer, tokenizer_json, vocab, vocab_size)
    else:
        spm_path = _sentencepiece_file(tokenizer)
        if spm_path is not None:
            fields = _sentencepiece(tokenizer, spm_path, vocab, vocab_size)
        else:
            if tokenizer_json is None:
                found = f"a slow {type(tokenizer).__name__} without a tokenizer.model"
            else:
                pre = tokenizer_json.get("pre_tokenizer")
                found = (f"a {model.get('type')} model with pre-tokenizer "
                         f"{(pre or {}).get('type')} and decoder {decoder.get('type')} (no tokenizer.model)")
            raise ValueError(f"cannot represent this tokenizer in GGUF faithfully: found {found}; {_WAY_OUT}. "
                             "A SentencePiece-style fast tokenizer needs its tokenizer.model (the piece scores "
                             "llama.cpp merges by are not in tokenizer.json); a slow byte-level tokenizer needs "
                             "use_fast=True")

    fields += _special_fields(tokenizer, vocab_size)
    fields += _template_fields(tokenizer, chat_template)
    return fields


def _backend_json(tokenizer) -> dict | None:
    if hasattr(tokenizer, "tokenizer_json"):  # TokenizerFiles: already parsed
        return tokenizer.tokenizer_json
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return parse_json(backend.to_str())


def _sentencepiece_file(tokenizer) -> str | None:
    candidates = [getattr(tokenizer, "vocab_file", None)]
    name = getattr(tokenizer, "name_or_path", None)
    if name and os.path.isdir(name):
        candidates.append(os.path.join(name, "tokenizer.model"))
    for path in candidates:
        if isinstance(path, str) and path.endswith(".model") and os.path.isfile(path):
            return path
    return None


def _byte_level_bpe(tokenizer, tj: dict, vocab: dict[str, int], vocab_size: int) -> list[MetaField]:
    model = tj["model"]
    if model.get("byte_fallback"):
        raise ValueError("byte-level BPE with byte_fallback is not a tokenizer llama.cpp implements")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"BPE with {key}={model[key]!r}: llama.cpp's BPE has no such affixes")
    if model.get("dropout"):
        raise ValueError("BPE with dropout is not deterministic; llama.cpp cannot reproduce it")
    pre = bpe_pre_name(tj)

    # whole-list operations (map, zip, str.join), not a Python loop per token: 128k tokens and 280k merges
    by_id = dict(zip(vocab.values(), vocab.keys()))
    tokens = list(map(by_id.get, range(vocab_size)))
    types = [int(TokenType.NORMAL)] * vocab_size
    if None in tokens:                               # ids no token has: the embedding's padding
        for i in [i for i, t in enumerate(tokens) if t is None]:
            tokens[i], types[i] = f"[PAD{i}]", int(TokenType.UNUSED)
    for i, t in tokenizer.added_tokens_decoder.items():  # id -> AddedToken
        if i < vocab_size:
            tokens[i] = t.content
            types[i] = int(TokenType.CONTROL if t.special else TokenType.USER_DEFINED)
    merges = _merge_strings(model.get("merges") or [])
    if not merges:
        raise ValueError("byte-level BPE tokenizer without merges: llama.cpp needs them")
    return [
        MetaField(Keys.Tokenizer.MODEL, "gpt2", GGUFValueType.STRING),
        MetaField(Keys.Tokenizer.PRE, pre, GGUFValueType.STRING),
        MetaField(Keys.Tokenizer.LIST, tokens, GGUFValueType.ARRAY),
        MetaField(Keys.Tokenizer.TOKEN_TYPE, types, GGUFValueType.ARRAY),
        MetaField(Keys.Tokenizer.MERGES, merges, GGUFValueType.ARRAY),
    ]


def _merge_strings(merges: list) -> list[str]:
    """GGUF's "left right" merge strings from tokenizer.json's merges: those strings already (older files) or
    [left, right] pairs, whose tokens must not hold the separating space."""
    kinds = set(map(type, merges))
    if kinds <= {str}:
        return list(merges)
    if kinds == {list} and set(map(len, merges)) == {2}:
        joined = list(map(" ".join, merges))
        if sum(map(str.count, joined, repeat(" "))) == len(joined):  # the separator is each one's only space
            return joined
    out = []                                         # mixed forms, or a space in a token: find it
    for m in merges:
        if isinstance(m, str):
            out.append(m)
            continue
        left, right = m
        if " " in left or " " in right:
            raise ValueError(f"BPE merge {m!r} contains a space, which GGUF's 'left right' merge strings "
                             "cannot hold")
        out.append(f"{left} {right}")
    return out


def _sentencepiece(tokenizer, path: str, vocab: dict[str, int], vocab_size: int) -> list[MetaField]:
    with open(path, "rb") as f:
        spm = read_sentencepiece_model(f.read())
    where = f"SentencePiece model {path}"
    if spm.model_type != 2:
        kind = SentencePieceModel.MODEL_TYPES.get(spm.model_type, str(spm.model_type))
        raise ValueError(f"{where} is a {kind} model: llama.cpp's 'llama' vocabulary merges pieces by score "
                         "(BPE); a unigram model would need its 't5' (UGM) vocabulary, which this exporter does "
                         f"not write; {_WAY_OUT}")
    if spm.precompiled_charsmap or spm.normalizer_name not in ("", "identity"):
        raise ValueError(f"{where} normalizes text ({spm.normalizer_name or 'precompiled charsmap'}); llama.cpp's "
                         "'llama' vocabulary applies no normalization, so it would tokenize differently")
    if spm.remove_extra_whitespaces:
        raise ValueError(f"{where} collapses repeated whitespace (remove_extra_whitespaces); llama.cpp's 'llama' "
                         "vocabulary does not, so it would tokenize differently")
    if spm.treat_whitespace_as_suffix:
        raise ValueError(f"{where} puts whitespace at the end of pieces; llama.cpp's 'llama' vocabulary only "
                         "supports the prefix form")
    n_bytes = sum(t == TokenType.BYTE for t in spm.types)
    if n_bytes != 256:
        raise ValueError(f"{where} has {n_bytes} byte pieces, not 256 (byte_fallback off): llama.cpp falls back "
                         "to byte pieces for characters outside the vocabulary and would fail")
    n_pieces = len(spm.pieces)
    added = tokenizer.added_tokens_decoder
    for i, piece in enumerate(spm.pieces):
        if i not in added and vocab.get(piece) != i:
            raise ValueError(f"{where} does not match the tokenizer: piece {i} is {piece!r} in the model but "
                             f"has id {vocab.get(piece)} in the tokenizer")
    if vocab_size < n_pieces:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {n_pieces} pieces of {where}")

    tokens = list(spm.pieces) + [f"[PAD{i}]" for i in range(n_pieces, vocab_size)]
    scores = [float(s) for s in spm.scores] + [-10000.0] * (vocab_size - n_pieces)
    types = [int(t) for t in spm.types] + [int(TokenType.UNUSED)] * (vocab_size - n_pieces)
    for i, tok in added.items():
        if i >= vocab_size:
            raise ValueError(f"added token {tok.content!r} has id {i}, past vocab_size {vocab_size}")
        if i < n_pieces and tok.content == spm.pieces[i]:
            continue                                   # <unk>, <s>, </s>: the model's own pieces and types
        tokens[i] = tok.content if tok.special else tok.content.replace("\u2581", " ")
        types[i] = int(TokenType.CONTROL if tok.special else TokenType.USER_DEFINED)
        scores[i] = -1000.0
    return [
        MetaField(Keys.Tokenizer.MODEL, "llama", GGUFValueType.STRING),
        MetaField(Keys.Tokenizer.LIST, tokens, GGUFValueType.ARRAY),
        MetaField(Keys.Tokenizer.SCORES, scores, GGUFValueType.ARRAY),
        MetaField(Keys.Tokenizer.TOKEN_TYPE, types, GGUFValueType.ARRAY),
        MetaField(Keys.Tokenizer.ADD_PREFIX, spm.add_dummy_prefix, GGUFValueType.BOOL),
    ]


def _special_fields(tokenizer, vocab_size: int) -> list[MetaField]:
    fields = []
    for attr, key in (("bos_token_id", Keys.Tokenizer.BOS_ID), ("eos_token_id", Keys.Tokenizer.EOS_ID),
                      ("unk_token_id", Keys.Tokenizer.UNK_ID), ("sep_token_id", Keys.Tokenizer.SEP_ID),
                      ("pad_token_id", Keys.Tokenizer.PAD_ID), ("mask_token_id", Keys.Tokenizer.MASK_ID)):
        try:
            value = getattr(tokenizer, attr, None)
        except Exception:                              # some tokenizers raise for an undefined special token
            value = None
        if isinstance(value, int) and 0 <= value < vocab_size:
            fields.append(MetaField(key, int(value), GGUFValueType.UINT32))
    add_bos, add_eos = _added_specials(tokenizer)
    fields.append(MetaField(Keys.Tokenizer.ADD_BOS, add_bos, GGUFValueType.BOOL))
    fields.append(MetaField(Keys.Tokenizer.ADD_EOS, add_eos, GGUFValueType.BOOL))
    return fields


def _added_specials(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds BOS in front / EOS at the end, seen by encoding with and without special tokens
    (TokenizerFiles reads them off its post-processor)."""
    if hasattr(tokenizer, "special_affixes"):
        prefix, suffix = tokenizer.special_affixes()
    else:
        prefix, suffix = _probe_affixes(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if prefix not in ([], [bos]) or suffix not in ([], [eos]):
        raise ValueError(f"the tokenizer adds {prefix} before and {suffix} after the text; GGUF can only say "
                         f"'add BOS ({bos})' and 'add EOS ({eos})'")
    return bool(prefix), bool(suffix)


def _probe_affixes(tokenizer) -> tuple[list[int], list[int]]:
    probe = "a b"
    plain = tokenizer.encode(probe, add_special_tokens=False)
    full = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise ValueError(f"encoding with special tokens changes the text's tokens ({plain} -> {full}): "
                     "not representable in GGUF")


def _template_fields(tokenizer, chat_template) -> list[MetaField]:
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if not template:
        return []
    if isinstance(template, str):
        return [MetaField(Keys.Tokenizer.CHAT_TEMPLATE, template, GGUFValueType.STRING)]
    if isinstance(template, dict):
        fields, names = [], []
        for name, text in template.items():
            if name == "default":
                fields.append(MetaField(Keys.Tokenizer.CHAT_TEMPLATE, text, GGUFValueType.STRING))
            else:
                names.append(name)
                fields.append(MetaField(Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name), text,
                                        GGUFValueType.STRING))
        if names:
            fields.append(MetaField(Keys.Tokenizer.CHAT_TEMPLATES, names, GGUFValueType.ARRAY))
        return fields
    raise ValueError(f"chat_template must be a string or a dict of named templates, not {type(template).__name__}")
