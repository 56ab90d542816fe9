"""The SentencePiece model proto (sentencepiece_model.proto) read without the protobuf or sentencepiece packages:
pieces, scores, piece types and the normalizer/trainer settings the GGUF tokenizer export needs (tokenizer.py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)          # sentencepiece's Type enum == GGUF token type
    model_type: int = 1                                      # TrainerSpec.ModelType: 1 unigram, 2 bpe, 3 word, 4 char
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True

    MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated SentencePiece model (varint runs past the end)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message: int for varints, bytes for the others."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"not a SentencePiece model (protobuf wire type {wire} at byte {pos})")
        if pos > len(buf):
            raise ValueError("truncated SentencePiece model")
        yield number, wire, value


def read_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Parse a serialized sentencepiece ModelProto (the tokenizer.model file)."""
    m = SentencePieceModel()
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:                      # repeated SentencePiece pieces
            piece, score, ptype = "", 0.0, 1
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif n == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    ptype = v
            m.pieces.append(piece)
            m.scores.append(score)
            m.types.append(ptype)
        elif number == 2 and wire == 2:                    # TrainerSpec
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    m.model_type = v
                elif n == 35 and w == 0:
                    m.byte_fallback = bool(v)
                elif n == 24 and w == 0:
                    m.treat_whitespace_as_suffix = bool(v)
        elif number == 3 and wire == 2:                    # NormalizerSpec
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    m.normalizer_name = v.decode("utf-8")
                elif n == 2 and w == 2:
                    m.precompiled_charsmap = bytes(v)
                elif n == 3 and w == 0:
                    m.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    m.remove_extra_whitespaces = bool(v)
    if not m.pieces:
        raise ValueError("not a SentencePiece model: no pieces")
    return m
