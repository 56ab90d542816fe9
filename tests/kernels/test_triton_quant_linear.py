"""Triton quantized-linear kernels (slipstream/kernels/triton_quant_linear.py) under the interpreter, against
float64 references built from the reference dequantization (docs/quantization.md)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_testing import assert_close, randn

from slipstream.kernels import quant_formats as qf
from slipstream.kernels import triton_quant_linear as tq


def _dequantize(packed, scales, aux, fmt, group, n, k, swap_nibbles=False):
    """The reference (fp32) dequantization; swap_nibbles reads 4-bit bytes in the wrong order (must fail)."""
    if swap_nibbles:
        packed = (packed >> 4) | (packed << 4)
    return qf.dequantize(packed, scales, aux, fmt, group, n, k, torch.float32)


# (fmt, group, symmetric, double quant) for the format variants.
FORMATS = {
    "int8": ("int8", 0, True, False), "fp8": ("fp8", 0, True, False), "int4g32": ("int4", 32, True, False),
    "int4g128": ("int4", 128, True, False), "int4a64": ("int4", 64, False, False),
    "nf4": ("nf4", 64, True, False), "nf4dq": ("nf4", 64, True, True),
}


def _weight(name: str, k: int, n: int):
    fmt, group, sym, dq = FORMATS[name]
    w = randn(n, k, scale=k**-0.5)
    q = qf.quantize(w, qf.QuantSpec(fmt, group or 128, sym, dq))
    assert q.shape == (n, k) and q.fmt == fmt
    return (q.packed, q.scales, q.aux, fmt, q.group, n, k)


BF, F32 = torch.bfloat16, torch.float32

# (format, (in, out), M, x dtype, LoRA rank, bias): every format, both shapes, M 1/300, fp32/bf16, ranks
# 0/1/8/64 and bias spread over the cases rather than crossed.
MATMUL_CASES = [
    ("int8", (96, 200), 300, F32, 0, True), ("int8", (97, 64), 1, BF, 8, False),
    ("fp8", (97, 64), 300, BF, 0, True), ("fp8", (96, 200), 1, F32, 64, True),
    ("int4g32", (97, 64), 300, F32, 1, False), ("int4g128", (96, 200), 1, BF, 0, True),
    ("int4a64", (97, 200), 300, BF, 8, True), ("int4a64", (96, 64), 1, F32, 0, False),
    ("nf4", (97, 64), 300, F32, 8, True), ("nf4", (96, 64), 1, BF, 0, False),
    ("nf4dq", (96, 200), 300, BF, 64, False), ("nf4dq", (97, 200), 1, F32, 1, True),
    ("int4g32", (97, 200), 17, torch.float16, 8, True),
    ("nf4", (128, 200), 300, BF, 8, True), ("nf4dq", (64, 97), 1, F32, 0, False),  # K % 64 == 0: aligned path
]


@pytest.mark.parametrize("name,shape,m,dtype,rank,has_bias", MATMUL_CASES)
def test_quant_matmul(name, shape, m, dtype, rank, has_bias):
    k, n = shape
    weight = _weight(name, k, n)
    x = randn(m, k, dtype=dtype)
    xa = randn(m, rank, dtype=dtype, scale=0.5) if rank else None
    b = randn(n, rank, dtype=dtype, scale=0.2) if rank else None
    bias = randn(n, dtype=dtype) if has_bias else None
    y = tq.quant_matmul(x, *weight, lora_xa=xa, lora_b=b, bias=bias)
    assert y.dtype == dtype and y.shape == (m, n)
    expected = x.double() @ _dequantize(*weight).double().T
    if rank:
        expected += xa.double() @ b.double().T
    if has_bias:
        expected += bias.double()
    assert_close(y, expected, dtype)


def test_quant_matmul_leading_dims():
    weight = _weight("int4a64", 64, 48)
    x = randn(2, 3, 64)
    y = tq.quant_matmul(x, *weight)
    assert y.shape == (2, 3, 48)
    assert_close(y, x.double() @ _dequantize(*weight).double().T, F32)


@pytest.mark.parametrize("shape", [(128, 97), (97, 64)])
def test_nf4_codebook_gather_variant(shape, monkeypatch):
    """The tl.gather codebook lookup (NF4_TREE = False) agrees with the reference too, aligned and not."""
    monkeypatch.setattr(tq, "NF4_TREE", False)
    k, n = shape
    weight = _weight("nf4dq", k, n)
    x, dy = randn(40, k), randn(40, n)
    assert_close(tq.quant_matmul(x, *weight), x.double() @ _dequantize(*weight).double().T, F32)
    assert_close(tq.quant_matmul_t(dy, *weight), dy.double() @ _dequantize(*weight).double(), F32)


@pytest.mark.parametrize("name", ["int4g32", "nf4dq"])
def test_bf16_tolerance_catches_wrong_nibble_order(name):
    """The bf16 tolerance is tight enough that reading the nibbles in the wrong order fails."""
    weight = _weight(name, 97, 64)
    x = randn(33, 97, dtype=BF)
    y = tq.quant_matmul(x, *weight)
    assert_close(y, x.double() @ _dequantize(*weight).double().T, BF)
    with pytest.raises(AssertionError):
        assert_close(y, x.double() @ _dequantize(*weight, swap_nibbles=True).double().T, BF)


# (format, (in, out), M, dy dtype)
T_CASES = [
    ("int8", (97, 200), 300, F32), ("fp8", (96, 64), 1, BF), ("int4a64", (97, 200), 300, BF),
    ("int4g32", (96, 64), 1, F32), ("int4g128", (97, 64), 40, BF), ("nf4dq", (97, 200), 300, F32),
    ("nf4", (96, 64), 1, BF), ("nf4dq", (128, 97), 300, BF), ("nf4", (64, 200), 17, F32),
]


@pytest.mark.parametrize("name,shape,m,dtype", T_CASES)
def test_quant_matmul_t(name, shape, m, dtype):
    k, n = shape
    weight = _weight(name, k, n)
    dy = randn(m, n, dtype=dtype)
    dx = tq.quant_matmul_t(dy, *weight)
    assert dx.dtype == dtype and dx.shape == (m, k)
    assert_close(dx, dy.double() @ _dequantize(*weight).double(), dtype)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_dequantize_exact(name):
    weight = _weight(name, 97, 200)
    assert torch.equal(tq.dequantize(*weight, F32), _dequantize(*weight))


@pytest.mark.parametrize("name", ["int4a64", "nf4", "nf4dq"])
def test_odd_element_count(name):
    """N*K odd (nf4: a padded last byte and a partial last block), K odd (int4: padding to Kp)."""
    weight = _weight(name, 97, 33)
    expected = _dequantize(*weight)
    assert torch.equal(tq.dequantize(*weight, F32), expected)
    x = randn(20, 97)
    assert_close(tq.quant_matmul(x, *weight), x.double() @ expected.double().T, F32)


def test_dequantize_bf16():
    weight = _weight("nf4dq", 96, 200)
    out = tq.dequantize(*weight, BF)
    assert out.dtype == BF
    assert_close(out, _dequantize(*weight), BF)


def test_bad_arguments():
    weight = _weight("int8", 32, 16)
    x = randn(4, 32)
    with pytest.raises(ValueError, match="both"):
        tq.quant_matmul(x, *weight, lora_xa=randn(4, 8))
    with pytest.raises(ValueError, match="does not match"):
        tq.quant_matmul(x, weight[0], weight[1], weight[2], "int8", 0, 17, 32)
    with pytest.raises(ValueError, match="unknown"):
        tq.dequantize(*weight[:3], "int3", 0, 16, 32)


def test_fp8_decodes_every_byte():
    """The in-kernel e4m3fn bit decode (normals, subnormals, signed zeros, NaN) against torch's cast."""
    packed = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(2, 128)
    scales = torch.tensor([1.0, 0.5])
    out = tq.dequantize(packed, scales, torch.empty(0), "fp8", 0, 2, 128)
    torch.testing.assert_close(out, packed.float() * scales[:, None], rtol=0, atol=0, equal_nan=True)


# Compiled for sm_90 in a subprocess without TRITON_INTERPRET, through the real wrappers on meta tensors (see
# cuda_compile_check.py): one call per tile config and format path the wrappers pick.
_COMPILE_SCRIPT = r"""
import sys
import torch
import cuda_compile_check as ccc
from slipstream.kernels import quant_formats as qf, triton_quant_linear as tq

H100_SMEM = 232448
ccc._TYPES.setdefault(torch.uint8, "u8")
ccc._TYPES.setdefault(torch.int8, "i8")


class Recorder(ccc._Recorder):
    def record(self, kernel, what):
        self.compiled.append((what, kernel.metadata.shared))


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def weight(fmt, n, k, group=0, asym=False, dq=False):
    u8, f32 = torch.uint8, torch.float32
    if fmt in ("int8", "fp8"):
        packed = meta(n, k, dtype=torch.int8 if fmt == "int8" else torch.float8_e4m3fn)
        return packed, meta(n, dtype=f32), meta(0, dtype=f32), fmt, 0, n, k
    if fmt == "int4":
        ng = -(-k // group)
        zeros = meta(n, ng, dtype=u8) if asym else meta(0, dtype=u8)
        return meta(n, ng * group // 2, dtype=u8), meta(n, ng, dtype=f32), zeros, fmt, group, n, k
    nb = -(-n * k // 64)
    aux = meta(257 + -(-nb // 256), dtype=f32) if dq else meta(0, dtype=f32)
    return meta(-(-n * k // 2), dtype=u8), meta(nb, dtype=u8 if dq else f32), aux, fmt, 64, n, k


def calls():
    n, k = 4096, 4096
    i8, f8 = weight("int8", n, k), weight("fp8", n, k)
    i4a, i4s = weight("int4", n, k, 128, asym=True), weight("int4", n, k, 32)
    nf4dq, nf4 = weight("nf4", n, k, dq=True), weight("nf4", n, k)
    x = meta(300, k)
    lora = dict(lora_xa=meta(300, 16), lora_b=meta(n, 16), bias=meta(n))
    for w in (i8, i4a, nf4dq):  # 128x128 tiles, with LoRA and bias
        yield lambda w=w: tq.quant_matmul(x, *w, **lora)
    for w in (i4s, nf4):  # decode tiles
        yield lambda w=w: tq.quant_matmul(meta(1, k), *w)
    yield lambda: tq.quant_matmul(meta(48, k), *f8)  # 64x64 tiles
    yield lambda: tq.quant_matmul(meta(300, k, dtype=torch.float32), *i8)  # fp32, ieee dots
    for w in (i4a, nf4dq):
        yield lambda w=w: tq.quant_matmul_t(meta(300, n), *w)
    yield lambda: tq.quant_matmul_t(meta(1, n), *f8)
    for w in (i4a, nf4dq):
        yield lambda w=w: tq.dequantize(*w, torch.bfloat16)


compiled = ccc.compile_with((tq,), calls(), 90, Recorder)
if isinstance(compiled, int):
    sys.exit(compiled)
print(f"compiled {len(compiled)} quant-linear kernels for sm_90; largest shared memory "
      f"{max(s for _, s in compiled)} bytes")
too_big = [(what, s) for what, s in compiled if s > H100_SMEM]
print(*too_big, sep="\n", file=sys.stderr)
sys.exit(1 if too_big else 0)
"""


@pytest.mark.slow
def test_quant_linear_kernels_compile_for_cuda(tmp_path):
    """The interpreter is lenient: also compile the wrappers' tile configs to sm_90 cubin, within H100 smem."""
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(here), str(here.parents[1]), env.get("PYTHONPATH")])),
               TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=1500)
    if result.returncode == 77:
        pytest.skip("this triton build has no CUDA backend")
    assert result.returncode == 0, result.stdout + result.stderr
