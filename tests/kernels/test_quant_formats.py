"""Quantized weight formats (slipstream/kernels/quant_formats.py) against docs/quantization.md and bitsandbytes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from kernel_testing import randn

from slipstream.kernels import quant_formats as qf
from slipstream.kernels.quant_formats import QuantSpec, dequantize, quantize

# NF4 as published by bitsandbytes (functional.get_4bit_type("nf4")) and in the QLoRA paper (Dettmers et al. 2023,
# arXiv:2305.14314, appendix E).
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]

# Entries of bitsandbytes' create_dynamic_map(signed=True), read from bitsandbytes 0.50.2.
DYNAMIC_MAP_ENTRIES = {
    0: -0.992968738079071, 1: -0.9789062738418579, 2: -0.96484375, 125: -3.250000190746505e-06,
    126: -5.500000384017767e-07, 127: 0.0, 128: 5.500000384017767e-07, 129: 3.250000190746505e-06,
    130: 7.749999895168003e-06, 253: 0.9789062738418579, 254: 0.992968738079071, 255: 1.0,
}

SPECS = [
    QuantSpec("int8"),
    QuantSpec("fp8"),
    *(QuantSpec("int4", group_size=g, symmetric=s) for g in qf.INT4_GROUPS for s in (True, False)),
    QuantSpec("nf4", double_quant=True),
    QuantSpec("nf4", double_quant=False),
]
SHAPES = [(96, 200), (200, 97), (1, 64)]


def _spec_id(spec: QuantSpec) -> str:
    extra = {"int4": f"g{spec.group_size}-{'sym' if spec.symmetric else 'asym'}", "nf4": f"dq{int(spec.double_quant)}"}
    return f"{spec.format}-{extra.get(spec.format, '')}".rstrip("-")


# ---------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("n, k", [(200, 97), (3, 1), (5, 64)])
def test_int4_rows_pack_round_trip(n, k):
    u = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    packed = qf.pack_int4_rows(u)
    assert packed.dtype == torch.uint8 and packed.shape == (n, math.ceil(k / 2))
    assert torch.equal(qf.unpack_int4_rows(packed, k), u)


@pytest.mark.parametrize("count", [1, 97, 200 * 97 + 1])
def test_nf4_pack_round_trip(count):
    idx = torch.randint(0, 16, (count,), dtype=torch.uint8)
    packed = qf.pack_nf4(idx)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(count / 2),)
    assert torch.equal(qf.unpack_nf4(packed, count), idx)


def test_packing_order_vectors():
    # int4: low nibble first along k, an odd K pads a zero high nibble.
    assert qf.pack_int4_rows(torch.tensor([[1, 2, 3, 4, 5], [15, 0, 0, 15, 9]])).tolist() == [
        [0x21, 0x43, 0x05], [0x0F, 0xF0, 0x09]]
    # nf4: flat, high nibble first (bitsandbytes' order).
    assert qf.pack_nf4(torch.tensor([1, 2, 3, 4, 5])).tolist() == [0x12, 0x34, 0x50]
    assert qf.unpack_nf4(torch.tensor([0xAB, 0x70], dtype=torch.uint8), 3).tolist() == [10, 11, 7]


def test_pack_rejects_bad_nibbles():
    with pytest.raises(ValueError, match="0..15"):
        qf.pack_nf4(torch.tensor([3, 16]))
    with pytest.raises(TypeError, match="integer"):
        qf.pack_int4_rows(torch.rand(2, 4))


# ---------------------------------------------------------------------------------------------- code tables


def test_nf4_code_is_published():
    assert qf.NF4_CODE.dtype == torch.float32
    assert torch.equal(qf.NF4_CODE, torch.tensor(PUBLISHED_NF4, dtype=torch.float32))


def test_dynamic_map_values():
    dmap = qf.dynamic_map()
    assert dmap.dtype == torch.float32 and dmap.shape == (256,)
    assert bool((dmap[1:] > dmap[:-1]).all()), "sorted, no repeats"
    for i, value in DYNAMIC_MAP_ENTRIES.items():
        assert dmap[i].item() == value, i


# ---------------------------------------------------------------------------------------------- round trips


def _expected_layout(spec: QuantSpec, n: int, k: int) -> dict:
    g = spec.group()
    if spec.format in ("int8", "fp8"):
        packed = (torch.int8 if spec.format == "int8" else torch.float8_e4m3fn, (n, k))
        return dict(packed=packed, scales=(torch.float32, (n,)), aux=(torch.float32, (0,)))
    if spec.format == "int4":
        kp = math.ceil(k / g) * g
        aux = (torch.uint8, (0,) if spec.symmetric else (n, kp // g))
        return dict(packed=(torch.uint8, (n, kp // 2)), scales=(torch.float32, (n, kp // g)), aux=aux)
    nb = math.ceil(n * k / 64)
    if spec.double_quant:
        aux = (torch.float32, (256 + 1 + math.ceil(nb / 256),))
        return dict(packed=(torch.uint8, (math.ceil(n * k / 2),)), scales=(torch.uint8, (nb,)), aux=aux)
    return dict(packed=(torch.uint8, (math.ceil(n * k / 2),)), scales=(torch.float32, (nb,)), aux=(torch.float32, (0,)))


def _per_group(values: torch.Tensor, group: int, k: int) -> torch.Tensor:
    return values.repeat_interleave(group, dim=1)[:, :k]


def _nf4_per_block(values: torch.Tensor, n: int, k: int) -> torch.Tensor:
    return values.repeat_interleave(64)[: n * k].reshape(n, k)


def _error_bound(q: qf.QuantizedWeight, w: torch.Tensor) -> torch.Tensor:
    """The doc's per-element bound, from the stored scales (float64)."""
    n, k = q.shape
    scales = q.scales.double()
    if q.fmt == "int8":
        return (scales / 2)[:, None].expand(n, k)
    if q.fmt == "fp8":
        return 2.0**-4 * w.abs() + 2.0**-9 * scales[:, None]
    if q.fmt == "int4":
        return _per_group(scales / 2, q.group, k)
    nf4_half_gap = torch.tensor(PUBLISHED_NF4, dtype=torch.float64).diff().max() / 2
    if q.scales.dtype != torch.uint8:
        return nf4_half_gap * _nf4_per_block(scales, n, k)
    dmap, offset, absmax2 = q.aux[:256].double(), q.aux[256].double(), q.aux[257:].double()
    absmax2_per_block = absmax2.repeat_interleave(256)[: q.scales.numel()]
    absmax = dmap[q.scales.long()] * absmax2_per_block + offset
    map_half_gap = max(dmap.diff().max().item() / 2, 1 + dmap[0].item())  # -1.0 is not in the map
    e = map_half_gap * absmax2_per_block
    return _nf4_per_block(nf4_half_gap * (absmax + e) + e, n, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n, k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_round_trip_within_bound(spec, n, k, dtype):
    # Rows of different magnitude so per-row and per-block scales differ.
    w = randn(n, k, dtype=dtype) * (0.5 + torch.rand(n, 1)).to(dtype)
    q = quantize(w, spec)

    assert (q.fmt, q.group, q.shape, q.dtype) == (spec.format, spec.group(), (n, k), dtype)
    for name, (want_dtype, want_shape) in _expected_layout(spec, n, k).items():
        t = getattr(q, name)
        assert (t.dtype, tuple(t.shape)) == (want_dtype, want_shape), name
    assert q.tensors() == (q.packed, q.scales, q.aux)
    assert q.nbytes == sum(t.numel() * t.element_size() for t in q.tensors())

    out = q.dequantize()
    assert out.dtype == dtype and out.shape == (n, k)
    exact = q.dequantize(torch.float32)
    assert torch.equal(exact, dequantize(*q.tensors(), q.fmt, q.group, n, k))
    assert torch.equal(out, exact.to(dtype))

    w64 = w.double()
    err = (exact.double() - w64).abs()
    bound = _error_bound(q, w64) * (1 + 1e-4) + 1e-30  # slack for fp32 rounding of w / scale and q * scale
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error {worst:.3g} x the bound"
    assert err.max() > 0, "quantization that loses nothing on random data is suspicious"


def test_zero_row_gets_unit_scale_and_zeros_back():
    w = randn(4, 96)
    w[2] = 0.0
    for spec in (QuantSpec("int8"), QuantSpec("fp8"), QuantSpec("int4", group_size=32, symmetric=False)):
        q = quantize(w, spec)
        assert bool((q.scales[2] == 1.0).all()), spec.format
        assert bool((q.dequantize()[2] == 0).all()), spec.format


def test_int4_asymmetric_zero_points():
    # A group of positives only: lo = 0 so the zero point is 0 and the whole 0..15 range is positive.
    w = randn(2, 64).abs() + 0.1
    q = quantize(w, QuantSpec("int4", group_size=32, symmetric=False))
    assert q.aux.dtype == torch.uint8 and bool((q.aux == 0).all())
    assert torch.allclose(q.scales, w.reshape(2, 2, 32).amax(-1) / 15)


# ---------------------------------------------------------------------------------------------- bitsandbytes

# bitsandbytes 0.50.2, torch 2.13 CPU, on the 3x45 weight of _bnb_weight() (135 elements: 3 blocks of 64, the last
# partial, an odd count): quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False / True). Its
# native library and its PyTorch path give the same bytes for this weight.
BNB_PACKED = [
    4, 193, 110, 41, 243, 176, 93, 23, 226, 159, 60, 5, 209, 142, 42, 244, 163, 123, 72, 197, 146, 106, 55, 180, 140,
    89, 54, 163, 124, 72, 197, 163, 110, 24, 227, 176, 77, 23, 226, 159, 59, 5, 209, 126, 42, 244, 192, 109, 72, 196,
    146, 106, 55, 180, 140, 89, 38, 163, 123, 72, 197, 163, 107, 55, 226, 175, 76, 23,
]
BNB_ABSMAX = [3.125, 0.765625, 0.1953125]
BNB_ABSMAX_CODES = [255, 47, 24]
BNB_OFFSET = 1.3619791269302368
BNB_ABSMAX2 = [1.7630208730697632]
# dequantize_4bit(...).flatten()[[0, 1, 70, 134]] without and with double quantization.
BNB_DEQUANT_AT = {False: [-3.125, -0.8888792991638184, 0.258716344833374, -0.13597515225410461],
                  True: [-3.125, -0.8888792991638184, 0.26242533326148987, -0.14367613196372986]}
DEQUANT_POSITIONS = [0, 1, 70, 134]


def _bnb_weight() -> torch.Tensor:
    # Exact in fp32 (multiples of 1/16 times powers of two), unlike sin(), whose last bit varies across libms.
    i = torch.arange(135, dtype=torch.float32)
    return ((((i * 37) % 101) - 50) / 16 * torch.exp2(-(i // 32))).reshape(3, 45)


def _bnb_state(double_quant: bool, dtype=torch.float32, **changes) -> SimpleNamespace:
    """What a bitsandbytes QuantState for the weight above holds."""
    state = dict(shape=torch.Size([3, 45]), dtype=dtype, blocksize=64, quant_type="nf4",
                 code=torch.tensor(PUBLISHED_NF4), offset=None, state2=None,
                 absmax=torch.tensor(BNB_ABSMAX, dtype=torch.float32))
    if double_quant:
        state.update(absmax=torch.tensor(BNB_ABSMAX_CODES, dtype=torch.uint8), offset=torch.tensor(BNB_OFFSET),
                     state2=SimpleNamespace(absmax=torch.tensor(BNB_ABSMAX2), code=qf.dynamic_map(), blocksize=256))
    state.update(changes)
    return SimpleNamespace(**state)


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "double_quant"])
def test_nf4_matches_bitsandbytes_bytes(double_quant):
    q = quantize(_bnb_weight(), QuantSpec("nf4", double_quant=double_quant))
    assert q.packed.tolist() == BNB_PACKED
    if double_quant:
        assert q.scales.tolist() == BNB_ABSMAX_CODES
        assert torch.equal(q.aux[:256], qf.dynamic_map())
        assert q.aux[256:].tolist() == [BNB_OFFSET, *BNB_ABSMAX2]
    else:
        assert q.scales.tolist() == BNB_ABSMAX
    assert q.dequantize().reshape(-1)[DEQUANT_POSITIONS].tolist() == BNB_DEQUANT_AT[double_quant]


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "double_quant"])
def test_from_bnb(double_quant):
    ours = quantize(_bnb_weight(), QuantSpec("nf4", double_quant=double_quant))
    bnb_bytes = torch.tensor(BNB_PACKED, dtype=torch.uint8).reshape(-1, 1)  # bitsandbytes keeps them as [n, 1]
    q = qf.from_bnb(bnb_bytes, _bnb_state(double_quant, dtype=torch.bfloat16))
    assert (q.fmt, q.group, q.shape, q.dtype) == ("nf4", 64, (3, 45), torch.bfloat16)
    assert q.packed.shape == (68,) and torch.equal(q.packed, ours.packed)
    assert torch.equal(q.scales, ours.scales) and torch.equal(q.aux, ours.aux)
    exact = q.dequantize(torch.float32)
    assert exact.reshape(-1)[DEQUANT_POSITIONS].tolist() == BNB_DEQUANT_AT[double_quant]
    assert q.dequantize().dtype == torch.bfloat16
    # quant_storage other than uint8: the same bytes seen as another dtype.
    as_bf16 = bnb_bytes.reshape(-1).view(torch.bfloat16).reshape(-1, 1)
    assert torch.equal(qf.from_bnb(as_bf16, _bnb_state(double_quant)).packed, q.packed)


def test_from_bnb_refuses_other_layouts():
    bnb_bytes = torch.tensor(BNB_PACKED, dtype=torch.uint8)
    with pytest.raises(ValueError, match="nf4 only.*fp4"):
        qf.from_bnb(bnb_bytes, _bnb_state(False, quant_type="fp4"))
    with pytest.raises(ValueError, match="blocksize 64"):
        qf.from_bnb(bnb_bytes, _bnb_state(False, blocksize=128))
    with pytest.raises(ValueError, match="packed bytes"):
        qf.from_bnb(bnb_bytes[:-1], _bnb_state(False))


def test_against_installed_bitsandbytes():
    """Runs only where bitsandbytes is importable (it is not a dependency)."""
    import bitsandbytes.functional as functional
    assert torch.equal(qf.dynamic_map(), functional.create_dynamic_map(signed=True))
    for n, k in [(200, 97), (33, 1000)]:
        w = randn(n, k) * (0.5 + torch.rand(n, 1))
        for double_quant in (False, True):
            packed, state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                     compress_statistics=double_quant)
            q = quantize(w, QuantSpec("nf4", double_quant=double_quant))
            assert torch.equal(q.packed, packed.reshape(-1))
            if double_quant:  # bitsandbytes' native CPU code rounds through a lookup table: a step or two off
                assert (q.scales.int() - state.absmax.int()).abs().max() <= 2
                assert q.aux[256].item() == state.offset.item()
            else:
                assert torch.equal(q.scales, state.absmax)
            assert torch.equal(qf.from_bnb(packed, state).dequantize(), functional.dequantize_4bit(packed, state))


# ---------------------------------------------------------------------------------------------- errors


def test_spec_validation():
    with pytest.raises(ValueError, match="int8, int4, nf4, fp8"):
        QuantSpec("int3")
    with pytest.raises(ValueError, match="int4 group_size"):
        QuantSpec("int4", group_size=16)
    with pytest.raises(ValueError, match="nf4 always uses blocks of 64"):
        QuantSpec("nf4", group_size=32)
    with pytest.raises(ValueError, match="per output channel"):
        QuantSpec("int8", group_size=64)
    with pytest.raises(ValueError, match="asymmetric"):
        QuantSpec("fp8", symmetric=False)
    assert QuantSpec("nf4").group() == QuantSpec("nf4", group_size=64).group() == 64
    assert QuantSpec("int4", group_size=32).group() == 32
    assert QuantSpec("int8").group() == QuantSpec("fp8").group() == 0


def test_quantize_rejects_bad_weights():
    with pytest.raises(ValueError, match="2-D"):
        quantize(randn(64), QuantSpec("int8"))
    with pytest.raises(ValueError, match="2-D"):
        quantize(randn(2, 3, 64), QuantSpec("nf4"))
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.randint(-5, 5, (4, 64)), QuantSpec("int4"))
    with pytest.raises(ValueError, match="unknown quantization format"):
        dequantize(torch.ones(4, dtype=torch.uint8), torch.ones(1), torch.ones(0), "int2", 0, 2, 4)
