"""Sweep RMSNorm's launch shape on a GPU (bf16, 8192 x 4096): forward rows per program and warps, backward
programs per SM and warps, as achieved bandwidth next to the measured copy bandwidth. The winners go into
triton_utils.row_tile / the backward's program count by hand.

    python benchmarks/rms_norm_tune.py      # CUDA only
"""
from __future__ import annotations

import torch
import triton
import triton.testing

from slipstream.kernels import triton_rms_norm as rn


def ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main() -> None:
    torch.manual_seed(0)
    m, n = 8192, 4096
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x, w, dy = torch.randn(m, n, **bf), torch.randn(n, **bf), torch.randn(m, n, **bf)
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy = 2 * src.numel() / ms(lambda: dst.copy_(src)) / 1e6
    print(f"{torch.cuda.get_device_name()}: copy {copy:.0f} GB/s")
    default_tile, default_programs = rn.row_tile, rn.persistent_programs
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for block_m in (1, 2, 4):
        for warps in (4, 8, 16):
            rn.row_tile = lambda *_, c=(block_m, triton.next_power_of_2(n), warps): c
            t = ms(lambda: rn.rms_norm_forward(x, w, 1e-6, 0.0, True, x.dtype))
            gbs = 2 * x.numel() * 2 / t / 1e6
            print(f"fwd rows/program {block_m} warps {warps:>2}: {t * 1e3:7.1f} us {gbs:6.0f} GB/s ({gbs / copy:.0%})")
    for per_sm in (1, 2, 4, 8):
        for block_m, warps in ((1, 8), (1, 16), (2, 8), (4, 16)):
            rn.row_tile = lambda *_, c=(block_m, triton.next_power_of_2(n), warps): c
            rn.persistent_programs = lambda t, work, per_sm=1, k=per_sm: min(work, k * sms)
            t = ms(lambda: rn.rms_norm_backward(dy, x, w, 1e-6, 0.0, True))
            gbs = 3 * x.numel() * 2 / t / 1e6
            print(f"bwd programs/SM {per_sm} rows/program {block_m} warps {warps:>2}: {t * 1e3:7.1f} us "
                  f"{gbs:6.0f} GB/s ({gbs / copy:.0%})", flush=True)
    rn.row_tile, rn.persistent_programs = default_tile, default_programs


if __name__ == "__main__":
    main()
