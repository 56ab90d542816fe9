"""Compile the quantized-linear kernels for sm_90 (no GPU needed), as cuda_compile_check.py does for the other
kernels: one call per tile config and format path the wrappers pick; each must fit an H100's shared memory.

Run as a script WITHOUT TRITON_INTERPRET (`[arch]`); exits 77 when this triton has no CUDA backend.
"""
import sys

import torch

import cuda_compile_check as ccc

ccc._TYPES.setdefault(torch.uint8, "u8")
ccc._TYPES.setdefault(torch.int8, "i8")


def _weight(fmt, n, k, group=0, asym=False, dq=False):
    meta, u8, f32 = ccc._meta, torch.uint8, torch.float32
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


def _calls():
    from slipstream.kernels import triton_quant_linear as tq

    meta, n, k = ccc._meta, 4096, 4096
    i8, f8 = _weight("int8", n, k), _weight("fp8", n, k)
    i4a, i4s = _weight("int4", n, k, 128, asym=True), _weight("int4", n, k, 32)
    nf4dq, nf4 = _weight("nf4", n, k, dq=True), _weight("nf4", n, k)
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


def main(arch: int = 90) -> int:
    from slipstream.kernels import triton_quant_linear

    compiled = ccc.compile_with((triton_quant_linear,), _calls(), arch, ccc._SmemRecorder)
    return compiled if isinstance(compiled, int) else ccc.fits_h100(compiled, "quant-linear", arch)


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
