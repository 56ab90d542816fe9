"""Our compressed-tensors packing against compressed-tensors' own code: the same int32 words as its pack_to_int32,
decompressed by its compressors to exactly our dequantized weights, config groups equal to its presets; and the
negative control: a checkpoint with swapped int4 nibbles fails the parity check."""
from __future__ import annotations

import pytest
import torch

from slipstream.backends.errors import ExportError
from slipstream.backends.vllm import SCHEMES
from slipstream.backends.vllm.compressed import check_shape, compress, planned, quantize_weight, reuse_refusal
from slipstream.kernels.quant_formats import QuantSpec, quantize

import compressed_tensors as ct
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme  # noqa: E402

N, K = 40, 256  # N not a multiple of 8: the packed zero points need padding


def _ct_scheme(scheme) -> QuantizationScheme:
    acts = scheme.input_activations
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**scheme.weights),
                              input_activations=QuantizationArgs(**acts) if acts else None)


@pytest.mark.parametrize("name", ["w4a16", "w4a16_asym", "w8a16"])
def test_packed_words_equal_compressed_tensors_pack_to_int32(name):
    scheme = SCHEMES[name]
    qw = quantize_weight(torch.randn(N, K), scheme)
    ours = compress(qw, scheme)
    if scheme.bits == 4:
        nibbles = torch.stack((qw.packed & 0xF, qw.packed >> 4), -1).reshape(N, K)
        q = (nibbles.to(torch.int16) - 8).to(torch.int8)
    else:
        q = qw.packed
    assert torch.equal(ours["weight_packed"], pack_to_int32(q, scheme.bits))
    if not scheme.symmetric:
        zp = (qw.aux.to(torch.int16) - 8).to(torch.int8)
        assert torch.equal(ours["weight_zero_point"], pack_to_int32(zp, 4, packed_dim=0))
    assert ours["weight_shape"].tolist() == [N, K]


@pytest.mark.parametrize("name", list(SCHEMES))
def test_compressed_tensors_decompresses_to_our_weights_exactly(name):
    scheme = SCHEMES[name]
    qw = quantize_weight(torch.randn(N, K), scheme)
    tensors = compress(qw, scheme)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()} == planned((N, K), scheme)
    if scheme.format == "pack-quantized":
        got = PackedQuantizationCompressor.decompress(dict(tensors), _ct_scheme(scheme))["weight"]
    else:
        from compressed_tensors.compressors.naive_quantized.base import NaiveQuantizationCompressor
        got = NaiveQuantizationCompressor.decompress(dict(tensors), _ct_scheme(scheme))["weight"]
    assert torch.equal(got.float(), qw.dequantize(torch.float32))


@pytest.mark.parametrize("name,preset", [("w4a16", "W4A16"), ("w4a16_asym", "W4A16_ASYM"), ("w8a8", "W8A8"),
                                         ("fp8", "FP8_DYNAMIC")])
def test_config_groups_are_compressed_tensors_presets(name, preset):
    ours = _ct_scheme(SCHEMES[name])
    theirs = preset_name_to_scheme(preset, ["Linear"])
    assert ours.weights == theirs.weights and ours.input_activations == theirs.input_activations


def test_w8a16_is_int8_per_channel_pack_quantized():
    """w8a16 stores our int8 per-channel weights: pack-quantized 8-bit, channel strategy (the W8A16 preset of
    compressed-tensors 0.20 is group 128; vLLM's weight-only int8 takes both)."""
    s = SCHEMES["w8a16"]
    assert (s.format, s.weights["strategy"], s.weights["num_bits"]) == ("pack-quantized", "channel", 8)
    QuantizationScheme.model_validate(SCHEMES["w8a16"].config_group())


def test_reuse_and_shape_checks():
    int4 = quantize(torch.randn(8, 256), QuantSpec("int4", 128))
    assert reuse_refusal(int4, SCHEMES["w4a16"]) is None
    assert "w4a16_asym" in reuse_refusal(quantize(torch.randn(8, 256), QuantSpec("int4", 128, False)),
                                         SCHEMES["w4a16"])
    assert "group size 64" in reuse_refusal(quantize(torch.randn(8, 256), QuantSpec("int4", 64)), SCHEMES["w4a16"])
    assert "nf4" in reuse_refusal(quantize(torch.randn(8, 256), QuantSpec("nf4")), SCHEMES["w4a16"])
    assert reuse_refusal(quantize(torch.randn(8, 256), QuantSpec("int8")), SCHEMES["w8a8"]) is None
    with pytest.raises(ExportError, match="multiple of the int4 group size 128.*w8a16"):
        check_shape("model.layers.0.mlp.down_proj.weight", (64, 96), SCHEMES["w4a16"])
    check_shape("x", (64, 96), SCHEMES["w8a8"])


def _swap_nibbles(directory):
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    state = load_file(path)
    for k, v in state.items():
        if k.endswith("weight_packed"):
            b = v.view(torch.uint8)
            state[k] = ((b >> 4) | (b << 4)).view(torch.int32)
    save_file(state, path, metadata={"format": "pt"})


def test_negative_control_swapped_nibbles_fail_the_parity_check(tmp_path):
    import slipstream
    from vllm_helpers import assert_parity, build, dequantized_reference

    model = build("llama")
    out = slipstream.export(model, tmp_path / "w4", format="vllm", quant="w4a16", progress=False)
    reference = dequantized_reference(model, out)
    assert_parity(out, reference, 1e-4)
    _swap_nibbles(out)
    with pytest.raises(AssertionError, match="max .logit difference"):
        assert_parity(out, reference, 1e-4)
