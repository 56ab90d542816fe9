"""GGUF tokenizer metadata against independent oracles:

* llama.cpp's own vocab-only GGUF files for Llama 3 and Qwen2 (tests/data/vocab-tests): our tokens, token types,
  merges, pre-tokenizer name and special ids equal theirs;
* llama.cpp itself: a vocab-only GGUF written from our metadata tokenizes every string of llama.cpp's tokenizer
  test (test-tokenizer-0: add_special=false, parse_special=false) into the expected ids;
* each byte-level pre-tokenizer name we map to is checked differentially (transformers vs llama.cpp) on a tiny
  BPE whose merges cross every split boundary, so a wrong regex <-> name pair shows up as different ids;
* SentencePiece: the proto reader on a hand-encoded model, and (with the `sentencepiece` package) a trained
  model whose scores/types we carry and llama.cpp tokenizes like sentencepiece;
* unrepresentable tokenizers raise ValueError.
"""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest

import gguf

from slipstream.backends.gguf.tokenizer import (
    MetaField, add_to_writer, as_dict, read_sentencepiece_model, tokenizer_metadata)
from slipstream.backends.gguf.writer import _fast_writer_class
from slipstream.gc_pause import load_auto_tokenizer

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
VOCAB_TESTS = DATA / "vocab-tests"
TOKENIZER_DIRS = {"llama3": ROOT / "slipstream" / "data" / "tokenizers" / "llama3",  # the demo's copy
                  "qwen2": DATA / "tokenizers" / "qwen2"}
ORACLE = {"llama3": "llama-bpe", "qwen2": "qwen2"}
ARCH = {"llama3": "llama", "qwen2": "qwen2"}
SEP = "\n__ggml_vocab_test__\n"


# ---------------------------------------------------------------------------------------------------- helpers

def vocab_tests(oracle: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test-tokenizer-0 cases: the .inp text split by the separator (each case is followed by one),
    the .out file one line of ids per case."""
    raw = (VOCAB_TESTS / f"ggml-vocab-{oracle}.gguf.inp").read_text(encoding="utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    out = (VOCAB_TESTS / f"ggml-vocab-{oracle}.gguf.out").read_text(encoding="utf-8").split("\n")
    if out and out[-1] == "":
        out.pop()
    assert len(texts) == len(out) > 40
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, out)]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_kv(data: bytes) -> dict[str, tuple[int, object]]:
    """The key/value section of a GGUF file: key -> (GGUF value type, value); arrays as (9, (item type, list)).
    A small reader (gguf.GGUFReader takes ~20 s on a 400k-string vocabulary); test_kv_reader checks it against
    GGUFReader."""
    assert data[:4] == b"GGUF"
    _version, _n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    pos = 24

    def string():
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        s = data[pos + 8:pos + 8 + n].decode("utf-8")
        pos += 8 + n
        return s

    def value(vtype):
        nonlocal pos
        if vtype == 8:
            return string()
        if vtype == 9:
            itype, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if itype in _SCALARS:
                fmt = _SCALARS[itype]
                items = list(struct.unpack_from(f"<{n}{fmt[1]}", data, pos))
                pos += n * struct.calcsize(fmt)
            else:
                items = [value(itype) for _ in range(n)]
            return itype, items
        fmt = _SCALARS[vtype]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    kv = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        kv[key] = (vtype, value(vtype))
    return kv


def oracle_kv(oracle: str) -> dict:
    with gzip.open(VOCAB_TESTS / f"ggml-vocab-{oracle}.gguf.gz", "rb") as f:
        return read_gguf_kv(f.read())


def write_vocab_gguf(path: Path, arch: str, fields: list[MetaField]) -> Path:
    """A vocab-only GGUF: the architecture and our tokenizer keys, written by the exporter's writer (the bytes
    gguf.GGUFWriter writes: test_writer.py). llama.cpp loads it with vocab_only=True without any hyperparameter or
    tensor (llama.cpp's own ggml-vocab files carry hyperparameters, unused)."""
    w = _fast_writer_class()(str(path), arch)
    add_to_writer(w, fields)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


@pytest.fixture
def open_vocab():
    """open_vocab(path) -> llama_cpp.Llama(vocab_only=True), closed after the test (skips without llama_cpp)."""
    opened = []

    def _open(path: Path):
        import llama_cpp
        opened.append(llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False))
        return opened[-1]

    yield _open
    for llm in opened:
        llm.close()


def cpp_tokenize(llm, text: str, add_bos: bool = False) -> list[int]:
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False))


@pytest.fixture(scope="module")
def tokenizers_(shipped_tokenizer):
    """The oracles' tokenizers, as shipped (tests/backends/conftest.py). Meta's Llama 3 tokenizer.json has
    "ignore_merges": true (the .out file was made with it: " Việt" is one token), and so does the copy shipped in
    slipstream/data (test_shipped_llama3_is_metas_llama_bpe; without it: test_llama3_without_ignore_merges)."""
    return {name: shipped_tokenizer(name)[1] for name in ("llama3", "qwen2")}


@pytest.fixture(scope="module")
def metadata(tokenizers_):
    return {name: tokenizer_metadata(tok) for name, tok in tokenizers_.items()}


# --------------------------------------------------------------------------------- the real vocabularies

@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_metadata_equals_llama_cpp_oracle(name, metadata):
    ours = {k: (f.type, f.value) for k, f in as_dict(metadata[name]).items()}
    theirs = oracle_kv(ORACLE[name])
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
        assert ours[key][1] == theirs[key][1], key
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert ours[key][0] == gguf.GGUFValueType.ARRAY
        assert len(ours[key][1]) == len(theirs[key][1][1]), key
        assert ours[key][1] == theirs[key][1][1], key
    for key, (vtype, value) in theirs.items():
        if key.endswith("_token_id"):
            assert ours[key] == (gguf.GGUFValueType.UINT32, value), key
    # what each file's pre-tokenizer implies in llama.cpp: Llama 3 adds BOS, Qwen2 does not
    assert ours["tokenizer.ggml.add_bos_token"][1] is (name == "llama3")
    assert ours["tokenizer.ggml.add_eos_token"][1] is False


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_llama_cpp_tokenizes_like_the_oracle(name, metadata, tokenizers_, tmp_path, open_vocab):
    import llama_cpp  # noqa: F401  (the llama.cpp oracle must be installed)
    path = write_vocab_gguf(tmp_path / f"{name}.gguf", ARCH[name], metadata[name])
    llm = open_vocab(path)
    cases = vocab_tests(ORACLE[name])
    bad = [(text, ids, cpp_tokenize(llm, text)) for text, ids in cases if cpp_tokenize(llm, text) != ids]
    assert not bad, f"{len(bad)} of {len(cases)} differ, e.g. {bad[:3]}"
    # and transformers agrees with the oracle, so the tokenizer under test is the one the .out was made with
    tok = tokenizers_[name]
    assert [tok.encode(t, add_special_tokens=False) for t, _ in cases] == [ids for _, ids in cases]
    # add_bos carried: the file adds BOS exactly when transformers does
    assert cpp_tokenize(llm, "Hello world", add_bos=True) == tok.encode("Hello world")
    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template


def test_chat_template_is_carried(tokenizers_, metadata):
    for name in ("llama3", "qwen2"):
        text = (TOKENIZER_DIRS[name] / "chat_template.jinja").read_text(encoding="utf-8")
        field = as_dict(metadata[name])["tokenizer.chat_template"]
        assert field == MetaField("tokenizer.chat_template", text, gguf.GGUFValueType.STRING)
    tok = tokenizers_["qwen2"]
    fields = as_dict(tokenizer_metadata(tok, chat_template={"default": "A", "tool_use": "B"}))
    assert fields["tokenizer.chat_template"].value == "A"
    assert fields["tokenizer.chat_template.tool_use"].value == "B"
    assert fields["tokenizer.chat_templates"].value == ["tool_use"]


def test_vocab_size_pads_with_unused_tokens(tokenizers_):
    tok = tokenizers_["llama3"]
    fields = as_dict(tokenizer_metadata(tok, vocab_size=128256 + 3))
    assert fields["tokenizer.ggml.tokens"].value[-3:] == ["[PAD128256]", "[PAD128257]", "[PAD128258]"]
    assert fields["tokenizer.ggml.token_type"].value[-4:] == [3, 5, 5, 5]
    with pytest.raises(ValueError, match="smaller than"):
        tokenizer_metadata(tok, vocab_size=1000)


def test_shipped_llama3_is_metas_llama_bpe(metadata):
    """The demo's copy carries Meta's "ignore_merges": true, so the demo model exports as llama-bpe."""
    assert as_dict(metadata["llama3"])["tokenizer.ggml.pre"].value == "llama-bpe"


def test_llama3_without_ignore_merges(shipped_tokenizer, tmp_path, open_vocab):
    """The Llama 3 regex without ignore_merges is llama.cpp's "smaug-bpe" (same regex, merges always applied):
    llama.cpp then tokenizes every test string as transformers does with this tokenizer, including the one where
    that differs from Meta's tokenizer (and the .out file)."""
    import llama_cpp  # noqa: F401  (the llama.cpp oracle must be installed)

    tok = load_auto_tokenizer(shipped_tokenizer("llama3")[0])  # its own copy: this test changes it
    tok.backend_tokenizer.model.ignore_merges = False  # before anything is encoded (and cached by the BPE)
    assert tok.backend_tokenizer.model.ignore_merges is False
    fields = tokenizer_metadata(tok)
    assert as_dict(fields)["tokenizer.ggml.pre"].value == "smaug-bpe"
    llm = open_vocab(write_vocab_gguf(tmp_path / "l3.gguf", "llama", fields))
    cases = vocab_tests("llama-bpe")
    hf = [tok.encode(t, add_special_tokens=False) for t, _ in cases]
    assert [cpp_tokenize(llm, t) for t, _ in cases] == hf
    assert sum(h != ids for h, (_, ids) in zip(hf, cases)) == 1       # " Việt"
    assert cpp_tokenize(llm, "Hello world", add_bos=True) == tok.encode("Hello world")


# ---------------------------------------------------------------- each pre-tokenizer name, differentially

def _tiny_byte_level_json() -> dict:
    """A byte-level BPE trained without any split, so its merges cross spaces, digits, punctuation and
    newlines: under a different split regex the same text gives different ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [t for t, _ in vocab_tests("llama-bpe")] + EXTRA_TEXTS
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tk.train_from_iterator(corpus * 3, trainer)
    return json.loads(tk.to_str())


EXTRA_TEXTS = ["I'VE been there, we'Re here, they'LL see; don't", "12345678901 1.5e10 ١٢٣٤ ½ Ⅻ",
               "a\n\n\nb \n c\r\n\td  \t  e", "    return x ## y ... !!! ???", "ǅungla Ωmega ÀÉÎ straße",
               "😀😀 a😀b 中文字符 日本語のテキスト", "x'y 's 'S 'll' 'LL"]


def _fast_tokenizer(tj: dict):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)),
                                   bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _split(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def _pre_tokenizers() -> dict[str, tuple[dict, bool]]:
    """name -> (tokenizer.json pre_tokenizer, BPE ignore_merges) that should map to it."""
    from slipstream.backends.gguf import tokenizer as T
    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"llama-bpe": (_split(T._LLAMA3_REGEX), True), "smaug-bpe": (_split(T._LLAMA3_REGEX), False),
            "qwen2": (_split(T._QWEN2_REGEX), False), "gpt-2": (gpt2, False)}


def test_every_known_pre_name_is_tested():
    from slipstream.backends.gguf import tokenizer as T
    assert sorted(p.name for p in T._KNOWN_PRE.values()) == sorted(_pre_tokenizers())


@pytest.mark.parametrize("pre", ["llama-bpe", "smaug-bpe", "qwen2", "gpt-2"])
def test_pre_name_tokenizes_like_transformers(pre, tmp_path, open_vocab):
    import llama_cpp  # noqa: F401  (the llama.cpp oracle must be installed)
    tj = _tiny_byte_level_json()
    tj["pre_tokenizer"], tj["model"]["ignore_merges"] = _pre_tokenizers()[pre]
    tok = _fast_tokenizer(tj)
    fields = tokenizer_metadata(tok)
    assert as_dict(fields)["tokenizer.ggml.pre"].value == pre
    llm = open_vocab(write_vocab_gguf(tmp_path / "tiny.gguf", "llama", fields))
    texts = [t for t, _ in vocab_tests("llama-bpe")] + EXTRA_TEXTS
    ours = [tok.encode(t, add_special_tokens=False) for t in texts]
    bad = [(t, a, cpp_tokenize(llm, t)) for t, a in zip(texts, ours) if a != cpp_tokenize(llm, t)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:2]}"
    # the test has teeth: under each other regex, some of these texts split differently
    for other, (pre_json, _) in _pre_tokenizers().items():
        if pre_json != _pre_tokenizers()[pre][0]:
            tj["pre_tokenizer"] = pre_json
            tok2 = _fast_tokenizer(tj)
            assert any(a != tok2.encode(t, add_special_tokens=False) for t, a in zip(texts, ours)), other


# ------------------------------------------------------------------------------------ unrepresentable

def test_unknown_pre_tokenizer_is_an_error():
    tj = _tiny_byte_level_json()
    tj["pre_tokenizer"] = _split(r"\p{N}{1,2}|\p{L}+|\s+|[^\s\p{L}\p{N}]+")
    with pytest.raises(ValueError, match=r"unrecognised byte-level BPE pre-tokenizer: split by regex "
                                         r"'\\p\{N\}\{1,2\}\|"):
        tokenizer_metadata(_fast_tokenizer(tj))
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _pre_tokenizers()["gpt-2"][0]]}
    with pytest.raises(ValueError, match="Digits"):
        tokenizer_metadata(_fast_tokenizer(tj))
    tj["pre_tokenizer"] = _pre_tokenizers()["qwen2"][0]
    tj["model"]["ignore_merges"] = True          # llama.cpp's qwen2 always merges
    with pytest.raises(ValueError, match="ignore_merges=true"):
        tokenizer_metadata(_fast_tokenizer(tj))
    tj["model"]["ignore_merges"] = False
    tj["pre_tokenizer"] = _pre_tokenizers()["gpt-2"][0]
    tj["normalizer"] = {"type": "Lowercase"}
    with pytest.raises(ValueError, match="Lowercase normalizer"):
        tokenizer_metadata(_fast_tokenizer(tj))


def test_wordpiece_is_an_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordPiece({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hel": 3, "##lo": 4}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    with pytest.raises(ValueError, match="WordPiece model.*byte-level BPE.*SentencePiece"):
        tokenizer_metadata(tok)


def test_sentencepiece_style_fast_tokenizer_without_model_file_is_an_error():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "\u2581": 259}
    tk = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    with pytest.raises(ValueError, match="needs its tokenizer.model"):
        tokenizer_metadata(PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>"))


# --------------------------------------------------------------------------------------- SentencePiece

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _spm_proto(pieces, model_type=2, normalizer="identity", extra_ws=False, dummy_prefix=True) -> bytes:
    """A sentencepiece ModelProto in protobuf wire format: pieces are (text, score or None, type or None)."""
    out = b""
    for text, score, ptype in pieces:
        body = _len_field(1, text.encode("utf-8"))
        if score is not None:
            body += _varint(2 << 3 | 5) + struct.pack("<f", score)
        if ptype is not None:
            body += _int_field(3, ptype)
        out += _len_field(1, body)
    out += _len_field(2, _int_field(3, model_type) + _int_field(35, 1) + _len_field(2, b"prefix"))
    out += _len_field(3, _len_field(1, normalizer.encode()) + _int_field(3, int(dummy_prefix))
                      + _int_field(4, int(extra_ws)))
    return out


def _byte_pieces():
    return [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]


def test_sentencepiece_reader_on_a_hand_encoded_model():
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)] + _byte_pieces() + \
             [("\u2581t", -1.0, None), ("he", -2.5, None), ("\u2581the", None, None), ("<sep>", None, 4)]
    m = read_sentencepiece_model(_spm_proto(pieces, dummy_prefix=False))
    assert m.pieces[:3] == ["<unk>", "<s>", "</s>"] and m.pieces[-4:] == ["\u2581t", "he", "\u2581the", "<sep>"]
    assert m.types[:4] == [2, 3, 3, 6] and m.types[-4:] == [1, 1, 1, 4]      # type defaults to NORMAL
    assert m.scores[-4:] == [-1.0, -2.5, 0.0, 0.0]                          # score defaults to 0
    assert (m.model_type, m.byte_fallback, m.normalizer_name) == (2, True, "identity")
    assert (m.add_dummy_prefix, m.remove_extra_whitespaces, m.precompiled_charsmap) == (False, False, b"")
    with pytest.raises(ValueError):
        read_sentencepiece_model(b"\x0a\xff")                             # truncated


class _SlowTokenizerStub:
    """Just enough of a slow transformers tokenizer to reach the SentencePiece checks."""

    def __init__(self, path: Path, pieces):
        self.vocab_file = str(path)
        self.name_or_path = str(path.parent)
        self.added_tokens_decoder = {}
        self._vocab = {p[0]: i for i, p in enumerate(pieces)}

    def get_vocab(self):
        return dict(self._vocab)


@pytest.mark.parametrize("kind,match", [
    (dict(model_type=1), "unigram model"),
    (dict(normalizer="nmt_nfkc"), "normalizes text"),
    (dict(extra_ws=True), "collapses repeated whitespace"),
])
def test_sentencepiece_models_llama_cpp_would_tokenize_differently_are_errors(kind, match, tmp_path):
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)] + _byte_pieces() + [("\u2581a", -1.0, 1)]
    path = tmp_path / "tokenizer.model"
    path.write_bytes(_spm_proto(pieces, **kind))
    with pytest.raises(ValueError, match=match):
        tokenizer_metadata(_SlowTokenizerStub(path, pieces))


def test_sentencepiece_model_in_llama_cpp(tmp_path, open_vocab):
    import sentencepiece as spm
    import io

    from transformers import LlamaTokenizer

    texts = [t for t, _ in vocab_tests("llama-bpe")] + EXTRA_TEXTS
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 4 + ["the quick brown fox jumps over the lazy dog"] * 20), model_writer=buf,
        vocab_size=600, model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=0.98, split_digits=True, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tok = LlamaTokenizer(vocab_file=str(tmp_path / "tokenizer.model"), legacy=True)

    fields = as_dict(tokenizer_metadata(tok, chat_template="{{ messages }}"))
    n = sp.get_piece_size()
    assert fields["tokenizer.ggml.model"].value == "llama"
    assert fields["tokenizer.ggml.tokens"].value == [sp.id_to_piece(i) for i in range(n)]
    assert fields["tokenizer.ggml.scores"].value == pytest.approx([sp.get_score(i) for i in range(n)])
    expected_types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
                      for i in range(n)]
    assert fields["tokenizer.ggml.token_type"].value == expected_types
    assert (fields["tokenizer.ggml.bos_token_id"].value, fields["tokenizer.ggml.eos_token_id"].value) == (1, 2)
    assert fields["tokenizer.ggml.add_bos_token"].value is True

    import llama_cpp  # noqa: F401  (the llama.cpp oracle must be installed)
    llm = open_vocab(write_vocab_gguf(tmp_path / "spm.gguf", "llama", list(fields.values())))
    bad = [(t, sp.encode(t), cpp_tokenize(llm, t)) for t in texts if t and sp.encode(t) != cpp_tokenize(llm, t)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:2]}"
    assert cpp_tokenize(llm, "Hello world", add_bos=True) == tok.encode("Hello world")


# --------------------------------------------------------------------------------------- the helpers

def test_kv_reader(tmp_path, metadata):
    """The fast GGUF reader above agrees with gguf.GGUFReader (on a small file)."""
    fields = metadata["qwen2"]
    small = [f if f.type != gguf.GGUFValueType.ARRAY else MetaField(f.key, f.value[:50] + f.value[-300:], f.type)
             for f in fields]
    small.append(MetaField("test.scores", [0.5, -1.25], gguf.GGUFValueType.ARRAY))
    path = write_vocab_gguf(tmp_path / "small.gguf", "qwen2", small)
    ours = read_gguf_kv(path.read_bytes())
    reader = gguf.GGUFReader(path)
    assert set(ours) == set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for key, (vtype, value) in ours.items():
        f = reader.fields[key]
        assert vtype == f.types[0], key
        if vtype == gguf.GGUFValueType.ARRAY:
            assert value[0] == f.types[1] and value[1] == pytest.approx(f.contents()), key
        else:
            assert value == pytest.approx(f.contents()), key
