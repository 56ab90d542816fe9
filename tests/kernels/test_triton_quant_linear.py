"""Triton quantized-linear kernels (slipstream/kernels/triton_quant_linear.py) under the interpreter, against
float64 references built from the reference dequantization (docs/quantization.md)."""
from __future__ import annotations

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
