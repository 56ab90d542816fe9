"""GGUF quantizers (slipstream/backends/gguf/quants.py): ggml's byte layout (read back by gguf.quants.dequantize),
bit-equality with gguf's own quantizers and with llama.cpp's llama-quantize (every type, x86-64), per-tensor error
within 1.1x of llama.cpp's, and llama.cpp's type mixes (table and llama-quantize itself)."""
from __future__ import annotations

import ctypes
import platform
import re

import numpy as np
import pytest
import torch

import gguf

from slipstream.backends.gguf import QUANTS  # noqa: E402
from slipstream.backends.gguf import ggml_bits  # noqa: E402
from slipstream.backends.gguf import quants as Q  # noqa: E402

QT = gguf.GGMLQuantizationType
K_QUANTS = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)
LEGACY = (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1)

# Relative RMS round-trip error bounds on _weights() data (measured: F16 2.0e-4, BF16 1.6e-3, Q8_0 5.6e-3,
# Q6_K 1.9e-2, Q5_1 3.8e-2, Q5_K 3.7e-2, Q5_0 4.6e-2, Q4_1 7.9e-2, Q4_K 7.3e-2, Q4_0 9.2e-2, Q3_K 0.15,
# Q2_K 0.29), set with ~25% margin.
RMS_BOUND = {QT.F32: 0.0, QT.F16: 3e-4, QT.BF16: 2.2e-3, QT.Q8_0: 7.5e-3, QT.Q6_K: 0.025, QT.Q5_1: 0.05,
             QT.Q5_K: 0.05, QT.Q5_0: 0.06, QT.Q4_1: 0.10, QT.Q4_K: 0.095, QT.Q4_0: 0.12, QT.Q3_K: 0.19,
             QT.Q2_K: 0.36}


def _weights(rows: int, cols: int, seed: int, kind: str = "normal") -> np.ndarray:
    """Fresh, never-zero weight-like data: per-row scales, a few outliers, a choice of tails."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((rows, cols))
    elif kind == "heavy":
        x = rng.standard_t(3, (rows, cols))
    elif kind == "uniform":
        x = rng.uniform(-1, 1, (rows, cols))
    elif kind == "skewed":
        x = rng.standard_normal((rows, cols)) + 0.7 * rng.exponential(1.0, (rows, cols))
    else:
        raise ValueError(kind)
    x *= 0.02 * np.exp(rng.normal(0, 0.5, (rows, 1)))
    idx = rng.integers(0, x.size, max(1, x.size // 2000))
    x.flat[idx] *= 8
    return x.astype(np.float32)


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2) / np.mean(b.astype(np.float64) ** 2)))


@pytest.mark.parametrize("qtype", Q.SUPPORTED, ids=lambda t: t.name)
def test_layout_and_round_trip(qtype):
    x = _weights(37, 512, seed=int(qtype))                              # odd row count
    raw = Q.quantize(x, qtype)
    assert raw.dtype == np.uint8 and raw.shape == gguf.quants.quant_shape_to_byte_shape(x.shape, qtype)
    ours = Q.dequantize(raw, qtype, x.shape)
    theirs = gguf.quants.dequantize(raw, qtype).reshape(x.shape)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours, theirs)
    assert _rel_rms(ours, x) <= RMS_BOUND[qtype]
    # 1-D input and the default shape (from the byte shape)
    v = _weights(1, 1024, seed=100 + int(qtype))[0]
    rv = Q.quantize(v, qtype)
    assert rv.shape == gguf.quants.quant_shape_to_byte_shape(v.shape, qtype)
    np.testing.assert_array_equal(Q.dequantize(rv, qtype), gguf.quants.dequantize(rv, qtype))


@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16, *LEGACY], ids=lambda t: t.name)
def test_bytes_equal_gguf_quantize(qtype):
    for kind in ("normal", "heavy", "skewed"):
        x = _weights(29, 256, seed=7 + int(qtype), kind=kind)
        ref = np.ascontiguousarray(gguf.quants.quantize(x, qtype)).view(np.uint8)
        np.testing.assert_array_equal(Q.quantize(x, qtype), ref)


@pytest.mark.parametrize("qtype", Q.SUPPORTED, ids=lambda t: t.name)
def test_special_blocks(qtype):
    """Zero, constant, all-negative, tiny and huge-outlier blocks among random ones: finite, readable, exact
    zeros stay zero."""
    x = _weights(9, 512, seed=3)
    x[1] = 0.0
    x[2] = 0.125
    x[3] = -np.abs(x[3])
    x[4] *= 1e-6
    x[5, 17] = 50.0
    raw = Q.quantize(x, qtype)
    ours = Q.dequantize(raw, qtype, x.shape)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(raw, qtype).reshape(x.shape))
    assert np.isfinite(ours).all()
    assert (ours[1] == 0).all()
    assert np.abs(ours[2] - 0.125).max() <= 0.125 * 0.02
    assert _rel_rms(ours[[0, 6, 7, 8]], x[[0, 6, 7, 8]]) <= RMS_BOUND[qtype] * 1.2


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_1, QT.Q3_K, QT.Q4_K, QT.Q6_K], ids=lambda t: t.name)
def test_parallel_and_chunked_bytes_equal(qtype, monkeypatch):
    """Chunked numpy passes and the writer's pieces on worker threads (bf16 rows converted there) give the bytes of
    one pass over the whole tensor."""
    from concurrent.futures import ThreadPoolExecutor

    from slipstream.backends.gguf import writer

    x = _weights(67, 1024, seed=11)
    single = Q.quantize(x, qtype)
    monkeypatch.setattr(Q, "_CHUNK_ELEMS", 4096)                      # many chunks
    np.testing.assert_array_equal(Q.quantize(x, qtype), single)
    monkeypatch.setattr(writer, "_PIECE_ELEMENTS", 3 * 1024)          # 3 rows per piece: 23 pieces, a short last one
    with ThreadPoolExecutor(max_workers=3) as pool:
        np.testing.assert_array_equal(writer._convert(torch.from_numpy(x), qtype, pool), single.reshape(-1))
        half = torch.from_numpy(x).bfloat16()
        np.testing.assert_array_equal(writer._convert(half, qtype, pool),
                                      Q.quantize(half.float().numpy(), qtype).reshape(-1))


def test_two_pass_roundf_is_c_roundf_below_128():
    """Q8_0's roundf (add the float below 1/2 with the sign, truncate) against the exact one on every float32 near
    each tie and integer in (-128, 128), and on the smallest magnitudes. (An exhaustive run over all 2^31 floats
    in the range, done once offline, found no difference.)"""
    ties = np.arange(-1275, 1276, dtype=np.float32) / np.float32(10)       # every k/2 and k/10 step
    centres = np.concatenate([np.arange(-128, 128, 0.5, dtype=np.float32), ties])
    bits = centres.view(np.int32)[:, None] + np.arange(-300, 301, dtype=np.int32)[None, :]
    y = bits.reshape(-1).view(np.float32)
    y = np.concatenate([y, np.arange(0, 1 << 20, dtype=np.int32).view(np.float32)])  # denormals and tiny values
    y = y[np.isfinite(y) & (np.abs(y) < 128)]
    want = ggml_bits._roundf(y).astype(np.int8)
    np.testing.assert_array_equal(ggml_bits._roundf_small(y.copy()), want)


def test_supports_and_sizes():
    assert Q.supports(QT.Q4_K, 4096) and not Q.supports(QT.Q4_K, 2880) and Q.supports(QT.Q5_0, 2880)
    assert not Q.supports(QT.Q8_0, 100) and Q.supports(QT.F16, 100) and not Q.supports(QT.IQ4_NL, 256)
    assert Q.block_size(QT.Q6_K) == 256 and Q.type_size(QT.Q6_K) == 210 and Q.block_size(QT.Q4_0) == 32
    with pytest.raises(ValueError):
        Q.quantize(_weights(2, 96, 0), QT.Q4_K)
    with pytest.raises(NotImplementedError):
        Q.quantize(_weights(2, 256, 0), QT.IQ4_NL)
    bad = _weights(3, 256, 0)
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Q.quantize(bad, QT.Q4_K)
    assert np.isnan(Q.dequantize(Q.quantize(bad, QT.F16), QT.F16, bad.shape)[1, 5])


# --------------------------------------------------------------------------------------------------- mixes

# Expected types for a 32-layer dense llama, read off llama.cpp's llama_tensor_get_type_impl (src/llama-quant.cpp):
# output.weight -> Q6_K; attn_v / ffn_down: q4_k_m and q5_k_m give Q6_K on use_more_bits layers
# (i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2: for n = 32 the layers below), q3_k_m gives attn_v Q5_K for
# i_attention_wv < 2, ffn_down Q5_K for i < n/16 = 2 (else Q4_K, non-Falcon), attn_output Q4_K.
MORE_BITS_32 = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
H, FF, V = 4096, 11008, 32000


def _llama_tensors(n_layers: int = 32):
    yield "token_embd.weight", (V, H)
    yield "output_norm.weight", (H,)
    yield "output.weight", (V, H)
    for i in range(n_layers):
        for t, shape in (("attn_norm", (H,)), ("ffn_norm", (H,)), ("attn_q", (H, H)), ("attn_k", (H, H)),
                         ("attn_v", (H, H)), ("attn_output", (H, H)), ("ffn_gate", (FF, H)),
                         ("ffn_up", (FF, H)), ("ffn_down", (H, FF))):
            yield f"blk.{i}.{t}.weight", shape
        yield f"blk.{i}.attn_q.bias", (H,)


def _expected(name: str, mix: str) -> QT:
    base = {"q4_k_m": QT.Q4_K, "q5_k_m": QT.Q5_K, "q3_k_m": QT.Q3_K}[mix]
    if not name.endswith(".weight") or "_norm" in name:
        return QT.F32
    if name == "output.weight":
        return QT.Q6_K
    m = re.match(r"blk\.(\d+)\.(\w+)\.weight", name)
    if m is None:
        return base
    i, t = int(m.group(1)), m.group(2)
    if mix == "q3_k_m":
        return {"attn_v": QT.Q5_K if i < 2 else QT.Q4_K, "ffn_down": QT.Q5_K if i < 2 else QT.Q4_K,
                "attn_output": QT.Q4_K}.get(t, base)
    if t in ("attn_v", "ffn_down") and i in MORE_BITS_32:
        return QT.Q6_K
    return base


@pytest.mark.parametrize("mix", ["q4_k_m", "q5_k_m", "q3_k_m"])
def test_mix_table_32_layers(mix):
    for name, shape in _llama_tensors():
        assert Q.tensor_type(name, shape, mix, 32) == _expected(name, mix), name


def test_plain_mixes_fallbacks_and_names():
    for mix, qtype in Q.PLAIN.items():
        assert Q.tensor_type("blk.3.ffn_up.weight", (FF, H), mix, 32) == qtype
        assert Q.tensor_type("output.weight", (V, H), mix, 32) == qtype          # like llama-quantize --pure
        assert Q.tensor_type("blk.3.attn_norm.weight", (H,), mix, 32) == QT.F32
    # llama.cpp tensor_type_fallback: rows of 2880 (% 256 != 0, % 32 == 0), then rows of 100 (% 32 != 0)
    fall = {"q2_k": QT.Q4_0, "q3_k": QT.Q4_0, "q4_k": QT.Q5_0, "q5_k": QT.Q5_1, "q6_k": QT.Q8_0,
            "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "f16": QT.F16}
    for mix, qtype in fall.items():
        assert Q.tensor_type("blk.0.attn_q.weight", (2880, 2880), mix, 24) == qtype
        assert Q.tensor_type("blk.0.attn_q.weight", (100, 100), mix, 24) == QT.F16
    assert Q.tensor_type("output.weight", (V, 2880), "q4_k_m", 24) == QT.Q8_0       # nx % qk_k -> Q8_0
    assert Q.tensor_type("blk.0.ffn_down.weight", (2880, 2880), "q4_k_m", 24) == QT.Q8_0  # Q6_K -> Q8_0
    assert Q.tensor_type("token_embd.weight", (V, H), "q4_k_m", 32) == QT.Q4_K
    assert Q.tensor_type("token_embd.weight", (V, H), "q4_k_m", 32, tied_embeddings=True) == QT.Q6_K
    assert Q.tensor_type("blk.0.ffn_gate_inp.weight", (8, H), "q4_k_m", 32) == QT.F32
    with pytest.raises(ValueError, match="valid: .*q4_k_m"):
        Q.tensor_type("output.weight", (V, H), "q4_k_xl", 32)
    assert set(QUANTS) == set(Q.QUANT_NAMES)
    assert Q.file_type("q4_k_m") == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)


# ------------------------------------------------------------------------------------ llama.cpp as the oracle

VOCAB = 320
_KINDS = ("normal", "heavy", "uniform", "skewed")
# name -> (layers, hidden, ffn, tied embeddings). "main": every row a whole number of 256-blocks; "tied": no
# output.weight (token_embd doubles as output); "odd": rows of 160 and 320, so K-quants fall back.
VARIANTS = {"main": (16, 256, 512, False), "tied": (2, 256, 512, True), "odd": (2, 160, 320, False)}


def _tiny_llama_tensors(n_layers, embd, ffn, tied):
    """A tiny llama in GGUF names and numpy shapes, varied weight statistics per tensor."""
    shapes = {"token_embd.weight": (VOCAB, embd), "output_norm.weight": (embd,)}
    if not tied:
        shapes["output.weight"] = (VOCAB, embd)
    for i in range(n_layers):
        shapes.update({f"blk.{i}.attn_norm.weight": (embd,), f"blk.{i}.ffn_norm.weight": (embd,),
                       f"blk.{i}.attn_q.weight": (embd, embd), f"blk.{i}.attn_k.weight": (embd, embd),
                       f"blk.{i}.attn_v.weight": (embd, embd), f"blk.{i}.attn_output.weight": (embd, embd),
                       f"blk.{i}.ffn_gate.weight": (ffn, embd), f"blk.{i}.ffn_up.weight": (ffn, embd),
                       f"blk.{i}.ffn_down.weight": (embd, ffn)})
    out = {}
    for j, (name, shape) in enumerate(shapes.items()):
        if len(shape) == 1:
            out[name] = (1.0 + 0.1 * np.random.default_rng(j).standard_normal(shape)).astype(np.float32)
        else:
            out[name] = _weights(*shape, seed=1000 + j, kind=_KINDS[j % len(_KINDS)])
    return out


def _write_tiny_llama(path, tensors, n_layers, embd, ffn):
    """The metadata llama_model_quantize needs to load a llama: hparams and a (tiny, never used) gpt2 vocab."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(embd)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_rope_dimension_count(embd // 4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([gguf.TokenType.NORMAL] * VOCAB)
    w.add_token_merges(["t 0"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def llama_oracle(tmp_path_factory):
    """run(variant, ftype name, pure) -> (f32 tensors, {name: (type, raw)}) from llama.cpp's llama_model_quantize
    (llama-quantize without an imatrix)."""
    import llama_cpp
    tmp = tmp_path_factory.mktemp("gguf_oracle")
    sources, cache = {}, {}

    def run(variant: str, ftype: str, pure: bool):
        if variant not in sources:
            n_layers, embd, ffn, tied = VARIANTS[variant]
            tensors = _tiny_llama_tensors(n_layers, embd, ffn, tied)
            _write_tiny_llama(tmp / f"{variant}-f32.gguf", tensors, n_layers, embd, ffn)
            sources[variant] = tensors
        key = (variant, ftype, pure)
        if key not in cache:
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")
            params.pure = pure
            params.nthread = 2
            src, dst = tmp / f"{variant}-f32.gguf", tmp / f"{variant}-{ftype}-{int(pure)}.gguf"
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
            assert rc == 0, f"llama_model_quantize failed for {key}"
            reader = gguf.GGUFReader(str(dst))
            cache[key] = {t.name: (QT(t.tensor_type), np.array(t.data)) for t in reader.tensors}
        return sources[variant], cache[key]

    return run


# llama.cpp ftypes whose default type is the one under test; run with pure=True (every tensor that type).
PURE_FTYPE = {QT.Q8_0: "MOSTLY_Q8_0", QT.Q4_0: "MOSTLY_Q4_0", QT.Q4_1: "MOSTLY_Q4_1", QT.Q5_0: "MOSTLY_Q5_0",
              QT.Q5_1: "MOSTLY_Q5_1", QT.Q2_K: "MOSTLY_Q2_K", QT.Q3_K: "MOSTLY_Q3_K_S", QT.Q4_K: "MOSTLY_Q4_K_S",
              QT.Q5_K: "MOSTLY_Q5_K_S", QT.Q6_K: "MOSTLY_Q6_K", QT.F16: "MOSTLY_F16", QT.BF16: "MOSTLY_BF16"}
ORACLE_TENSORS = ("token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                  "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_gate.weight",
                  "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.15.ffn_down.weight")
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _compare(x, qtype, traw):
    """(fraction of blocks whose bytes differ from llama.cpp's, our rel. RMS error / llama.cpp's)."""
    raw = Q.quantize(x, qtype)
    traw = traw.view(np.uint8).reshape(raw.shape)
    if X86:
        # Same algorithms, same float32 operations in the same order (per-group sums accumulated row after row
        # like ggml's loops): ggml's bytes exactly. llama.cpp's ggml-base is built for plain x86-64, so no FMA
        # contraction there; elsewhere a compiler may fuse a multiply-add and flip a rare rounding.
        np.testing.assert_array_equal(raw, traw)
    ts = Q.type_size(qtype)
    differing = float(np.any(raw.reshape(-1, ts) != traw.reshape(-1, ts), axis=1).mean())
    ours = _rel_rms(Q.dequantize(raw, qtype, x.shape), x)
    theirs = _rel_rms(gguf.quants.dequantize(traw, qtype).reshape(x.shape), x)
    return differing, ours / max(theirs, 1e-30)


@pytest.mark.parametrize("qtype", list(PURE_FTYPE), ids=lambda t: t.name)
def test_bytes_and_error_vs_llama_cpp(qtype, llama_oracle):
    tensors, theirs = llama_oracle("main", PURE_FTYPE[qtype], True)
    for name in ORACLE_TENSORS:
        ttype, traw = theirs[name]
        assert ttype == qtype, (name, ttype)
        differing, ratio = _compare(tensors[name], qtype, traw)
        assert differing <= 0.02 and ratio <= 1.1, (name, differing, ratio)


MIX_FTYPE = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q3_k_m": "MOSTLY_Q3_K_M",
             "q2_k": "MOSTLY_Q2_K", "q6_k": "MOSTLY_Q6_K", "q4_k": "MOSTLY_Q4_K_S", "q8_0": "MOSTLY_Q8_0"}


@pytest.mark.parametrize("variant, mix", [("main", "q4_k_m"), ("main", "q5_k_m"), ("main", "q3_k_m"),
                                          ("tied", "q4_k_m"), ("odd", "q4_k_m"), ("odd", "q5_k_m"),
                                          ("odd", "q3_k_m"), ("odd", "q2_k"), ("odd", "q6_k"), ("odd", "q4_k"),
                                          ("odd", "q8_0")])
def test_mix_types_match_llama_cpp(variant, mix, llama_oracle):
    """tensor_type() agrees with llama-quantize on every tensor: the mixes (pure=False), plain names as --pure, the
    tied-embeddings rule and the fallbacks for rows that are not whole 256-blocks."""
    n_layers, _, _, tied = VARIANTS[variant]
    tensors, theirs = llama_oracle(variant, MIX_FTYPE[mix], mix in Q.PLAIN)
    assert set(theirs) == set(tensors)
    for name, x in tensors.items():
        ttype = theirs[name][0]
        assert Q.tensor_type(name, x.shape, mix, n_layers, tied_embeddings=tied) == ttype, name
    if variant == "odd":                                   # and the fallback types' bytes
        for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output.weight"):
            ttype, traw = theirs[name]
            differing, ratio = _compare(tensors[name], ttype, traw)
            assert differing <= 0.02 and ratio <= 1.1, (name, differing, ratio)
