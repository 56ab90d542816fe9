"""GGUF tensor quantization: our own vectorised numpy quantizers that write ggml's block layout byte for byte.

`quantize(data, qtype)` turns float32 rows into the bytes llama.cpp (and `gguf.quants.dequantize`) read, for F32,
F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K..Q6_K. The algorithms are those of llama.cpp's
reference quantizers (ggml/src/ggml-quants.c, `quantize_row_*_ref`), which is exactly what `llama-quantize` runs
when no importance matrix is given (`quantize_q4_K(..., quant_weights=NULL)` -> `quantize_row_q4_K_ref`, and so
on): the same per-block scale searches, the same weightings and the same requantization against the fp16-rounded
scales. The whole tensor is processed at once, blocks along an array axis; the only Python loops are small fixed
ones (a search's candidate steps, the 16 positions of Q3_K's coordinate descent, bit planes when packing).

The float32 operations are ggml's, in ggml's order: per-group sums run over a (group length, groups) layout so
numpy accumulates them row after row exactly like the C loops, nearest_int is np.rint (ties to even, as ggml's
magic-number trick), roundf is rebuilt exactly. Against llama.cpp built for x86-64 (its ggml-base has no FMA), every
type here comes out byte-identical to llama-quantize's (tests/backends/gguf/test_quants.py checks it).

`tensor_type(name, shape, mix, n_layers)` picks each tensor's type the way llama.cpp's `llama_tensor_get_type`
(src/llama-quant.cpp) does for the q3_k_m / q4_k_m / q5_k_m mixes, and a single type for the plain names.

Layout: ggml_bits.py (fp16 scales, rounding, bit packings), scale_search.py (ggml's per-group scale searches),
block_quantizers.py and block_dequantizers.py (one function per type); this module is the public face.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from .block_dequantizers import _DEQUANTIZERS
from .block_quantizers import _QUANTIZERS
from .ggml_bits import _F

QT = GGMLQuantizationType
_CHUNK_ELEMS = 1 << 18       # elements quantized per numpy pass (bounds temporaries; any size gives equal bytes)

SUPPORTED = (QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
             QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)

# ----------------------------------------------------------------------------------------------- sizes and shapes

def block_size(qtype: QT) -> int:
    """Elements per block (1 for F32/F16/BF16, 32 for the legacy types, 256 for K-quants)."""
    return GGML_QUANT_SIZES[QT(qtype)][0]


def type_size(qtype: QT) -> int:
    """Bytes per block."""
    return GGML_QUANT_SIZES[QT(qtype)][1]


def byte_shape(shape: Sequence[int], qtype: QT) -> tuple[int, ...]:
    """The uint8 array shape `quantize` returns for a float tensor of `shape` (gguf's quant_shape_to_byte_shape)."""
    bs, ts = GGML_QUANT_SIZES[QT(qtype)]
    if shape[-1] % bs:
        raise ValueError(f"row length {shape[-1]} is not a multiple of {QT(qtype).name}'s block size {bs}")
    return (*shape[:-1], shape[-1] // bs * ts)


def supports(qtype: QT, cols: int) -> bool:
    """Whether rows of `cols` elements can be stored as `qtype` (K-quants need cols % 256 == 0, legacy % 32)."""
    return QT(qtype) in SUPPORTED and cols % block_size(qtype) == 0



def _check(qtype) -> QT:
    qtype = QT(qtype)
    if qtype not in _QUANTIZERS:
        raise NotImplementedError(f"quantization to {qtype.name} is not implemented; "
                                  f"supported: {', '.join(t.name for t in SUPPORTED)}")
    return qtype


def quantize(data: np.ndarray, qtype: QT) -> np.ndarray:
    """Quantize a float tensor (any shape; rows on the last axis, which must be a multiple of the block size) to
    `qtype`. Returns uint8 of shape byte_shape(data.shape, qtype): ready for GGUFWriter.add_tensor(name, raw,
    raw_dtype=qtype) or write_tensor_data, and readable by llama.cpp and gguf.quants.dequantize. Block types reject
    inf/NaN with ValueError (llama-quantize refuses them too)."""
    qtype = _check(qtype)
    data = np.asarray(data)
    out_shape = byte_shape(data.shape, qtype)
    bs, ts = GGML_QUANT_SIZES[qtype]
    blocks = np.ascontiguousarray(data, dtype=_F).reshape(-1, bs)
    out = np.empty((blocks.shape[0], ts), np.uint8)
    step = max(1, _CHUNK_ELEMS // bs)
    fn = _QUANTIZERS[qtype]
    check = bs > 1                                   # F32/F16/BF16 store inf/NaN as they are
    with np.errstate(all="ignore"):
        for i in range(0, blocks.shape[0], step):
            chunk = blocks[i:i + step]
            if check and not np.isfinite(chunk).all():
                raise ValueError(f"cannot quantize non-finite values (inf/NaN) to {qtype.name}")
            out[i:i + step] = fn(chunk)
    return out.reshape(out_shape)


def dequantize(raw: np.ndarray, qtype: QT, shape: Sequence[int] | None = None) -> np.ndarray:
    """Bytes from `quantize` (or a GGUF file) back to float32, shaped `shape` (default: from raw's byte shape)."""
    qtype = _check(qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8)
    bs, ts = GGML_QUANT_SIZES[qtype]
    if shape is None:
        if raw.shape[-1] % ts:
            raise ValueError(f"{raw.shape[-1]} bytes per row is not a multiple of {qtype.name}'s {ts}-byte block")
        shape = (*raw.shape[:-1], raw.shape[-1] // ts * bs)
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    if n % bs or raw.size != n // bs * ts:
        raise ValueError(f"{raw.size} bytes do not hold a {qtype.name} tensor of shape {shape}")
    out = np.empty((n // bs, bs), _F)
    blocks = raw.reshape(-1, ts)
    step = max(1, _CHUNK_ELEMS // bs)
    fn = _DEQUANTIZERS[qtype]
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = fn(blocks[i:i + step])
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------------- type mixes

PLAIN = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1,
         "q5_0": QT.Q5_0, "q5_1": QT.Q5_1, "q2_k": QT.Q2_K, "q3_k": QT.Q3_K, "q4_k": QT.Q4_K, "q5_k": QT.Q5_K,
         "q6_k": QT.Q6_K}
MIXES = {"q3_k_m": QT.Q3_K, "q4_k_m": QT.Q4_K, "q5_k_m": QT.Q5_K}   # mix -> llama.cpp's default type for it
QUANT_NAMES = tuple(PLAIN) + tuple(MIXES)

_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
               "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0,
               "q4_1": LlamaFileType.MOSTLY_Q4_1, "q5_0": LlamaFileType.MOSTLY_Q5_0,
               "q5_1": LlamaFileType.MOSTLY_Q5_1, "q2_k": LlamaFileType.MOSTLY_Q2_K,
               "q3_k": LlamaFileType.MOSTLY_Q3_K_S, "q4_k": LlamaFileType.MOSTLY_Q4_K_S,
               "q5_k": LlamaFileType.MOSTLY_Q5_K_S, "q6_k": LlamaFileType.MOSTLY_Q6_K,
               "q3_k_m": LlamaFileType.MOSTLY_Q3_K_M, "q4_k_m": LlamaFileType.MOSTLY_Q4_K_M,
               "q5_k_m": LlamaFileType.MOSTLY_Q5_K_M}

# llama.cpp's tensor_type_fallback (src/llama-quant.cpp), restricted to our types: when a row is not a whole
# number of 256-blocks, a K-quant falls back to a 32-block type; if even that does not fit, F16.
_FALLBACK = {QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}

_LAYER = re.compile(r"^blk\.(\d+)\.")


def _check_mix(mix: str) -> str:
    key = mix.lower()
    if key not in PLAIN and key not in MIXES:
        raise ValueError(f"unknown GGUF quant {mix!r}; valid: {', '.join(QUANT_NAMES)}")
    return key


def file_type(mix: str) -> int:
    """general.file_type (llama_ftype) to record for a mix, as llama-quantize writes it."""
    return int(_FILE_TYPES[_check_mix(mix)])


def _quantizable(name: str, shape: Sequence[int]) -> bool:
    """llama.cpp's tensor_allows_quantization for the tensors a dense decoder has: 2-D+ `*weight` tensors except
    norms, MoE routers and position / token-type embeddings."""
    return (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name and name not in ("position_embd.weight", "token_types.weight")
            and "attn_rel_b.weight" not in name and "ssm_conv1d" not in name)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # llama.cpp: the first and last eighth of the layers, and every third one in between
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _fallback(qtype: QT, cols: int) -> QT:
    if cols % block_size(qtype) == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, qtype)
    return qtype if cols % block_size(qtype) == 0 else QT.F16


def tensor_type(name: str, shape: Sequence[int], mix: str, n_layers: int, *,
                tied_embeddings: bool = False) -> QT:
    """The GGUF type for tensor `name` (a GGUF name: token_embd.weight, blk.N.attn_v.weight, output.weight, ...)
    of numpy `shape` (rows last: shape[-1] is ggml's ne[0], the row length) under `mix`.

    1-D tensors (norms, biases) and tensors llama.cpp never quantizes are F32. Plain names ("q4_0", "q6_k", "f16",
    ...) give every other tensor that type, like `llama-quantize --pure`. The mixes follow llama.cpp's
    llama_tensor_get_type for a dense (non-MoE, non-Falcon) model: output.weight (and token_embd.weight when the
    embeddings are tied, i.e. there is no output.weight) Q6_K; attn_v (and fused attn_qkv) and ffn_down more bits
    on the `use_more_bits` layers (q4_k_m, q5_k_m: Q6_K) or on the first layers (q3_k_m: Q5_K), q3_k_m also Q4_K
    for attn_output and the other attn_v / ffn_down. Rows that are not a whole number of the type's blocks fall
    back as llama.cpp's tensor_type_fallback does (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0;
    then F16 if even 32 does not divide)."""
    key = _check_mix(mix)
    if not _quantizable(name, shape):
        return QT.F32
    cols = int(shape[-1])
    if key in PLAIN:
        return _fallback(PLAIN[key], cols)
    default = MIXES[key]
    new = default
    m = _LAYER.match(name)
    layer = int(m.group(1)) if m else 0
    is_output = name == "output.weight"
    is_embd = name in ("token_embd.weight", "per_layer_token_embd.weight")
    if is_output or (tied_embeddings and is_embd):
        # llama.cpp: Q8_0 if the row does not fit the mix's default block, else Q6_K (the mix types are not Q8_0)
        return _fallback(QT.Q8_0 if cols % block_size(default) else QT.Q6_K, cols)
    if is_embd:
        pass                                                  # no special case for these mixes
    elif "attn_qkv.weight" in name or "attn_kv_b.weight" in name or "attn_v.weight" in name:
        # category_is_attn_v; i_attention_wv counts these tensors in layer order (= the layer for a dense model)
        if key == "q3_k_m":
            new = QT.Q5_K if layer < 2 else QT.Q4_K
        elif _use_more_bits(layer, n_layers):
            new = QT.Q6_K
    elif "attn_k.weight" in name or "attn_q.weight" in name:
        pass
    elif "attn_output.weight" in name:
        if key == "q3_k_m":
            new = QT.Q4_K
    elif "ffn_up" in name or "ffn_gate" in name:
        pass
    elif "ffn_down" in name:
        if key == "q3_k_m":
            new = QT.Q5_K if layer < n_layers // 16 else QT.Q4_K
        elif _use_more_bits(layer, n_layers):
            new = QT.Q6_K
    return _fallback(new, cols)
