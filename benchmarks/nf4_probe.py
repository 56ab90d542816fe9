"""Where does NF4 dequantization time go on a GPU? Variants of a dequantize kernel on a 4096 x 4096 weight, each
timed against a plain byte -> bf16 copy of the same bytes. Diagnostic; prints us and GB/s per variant.

    python benchmarks/nf4_probe.py        # CUDA only
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing

import slipstream.kernels.triton_quant_linear as tq
from slipstream.kernels.quant_formats import QuantSpec, quantize


@triton.jit
def _probe(P, S, CB, W, N, K, MODE: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr):
    """[BLOCK_N, 2 * HALF] tile of W from [BLOCK_N, HALF] packed bytes (high nibble first), fp32 absmax per 64.
    MODE 0: byte copy (bytes -> bf16, half the output); 1: nibbles, no lookup; 2: select-tree lookup;
    3: lookup + absmax (HALF = 32: one absmax block per row)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c0 = tl.program_id(1) * HALF
    rc = c0 + tl.arange(0, HALF)
    mask = (rn[:, None] < N) & (rc[None, :] < K // 2)
    byte = tl.load(P + rn.to(tl.int64)[:, None] * (K // 2) + rc[None, :], mask=mask, other=0).to(tl.int32)
    if MODE == 0:
        tl.store(W + rn.to(tl.int64)[:, None] * K + rc[None, :], byte.to(tl.bfloat16), mask=mask)
    else:
        hi = (byte >> 4) & 15
        lo = byte & 15
        if MODE == 1:
            vh, vl = hi.to(tl.float32), lo.to(tl.float32)
        else:
            vh, vl = tq._nf4_code(CB, hi, True), tq._nf4_code(CB, lo, True)
        if MODE == 3:
            absmax = tl.load(S + rn.to(tl.int64) * (K // 64) + (2 * c0) // 64, mask=rn < N, other=0.0)
            vh, vl = vh * absmax[:, None], vl * absmax[:, None]
        w = tl.reshape(tl.join(vh, vl), (BLOCK_N, 2 * HALF))
        rk = 2 * c0 + tl.arange(0, 2 * HALF)
        tl.store(W + rn.to(tl.int64)[:, None] * K + rk[None, :], w.to(tl.bfloat16),
                 mask=(rn[:, None] < N) & (rk[None, :] < K))


def main(n: int = 4096, k: int = 4096) -> None:
    torch.manual_seed(0)
    w = torch.randn(n, k, device="cuda") * k ** -0.5
    out = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
    for dq in (True, False):
        q = quantize(w, QuantSpec("nf4", double_quant=dq))
        t = triton.testing.do_bench(lambda: tq.dequantize(q.packed, q.scales, q.aux, "nf4", 64, n, k, torch.bfloat16),
                                    rep=50, return_mode="median")
        print(f"slipstream dequantize (double quant {dq}): {t * 1e3:7.1f} us  {n * k * 2.5 / t / 1e6:6.0f} GB/s")
    q = quantize(w, QuantSpec("nf4", double_quant=False))
    cb = tq._codebook(w.device)
    for mode in range(4):
        for block_n, half, warps in ((64, 32, 4), (128, 32, 4), (128, 32, 8), (256, 32, 8)):
            grid = (triton.cdiv(n, block_n), triton.cdiv(k // 2, half))
            t = triton.testing.do_bench(lambda: _probe[grid](q.packed, q.scales, cb, out, n, k, MODE=mode,
                                                             BLOCK_N=block_n, HALF=half, num_warps=warps),
                                        rep=50, return_mode="median")
            moved = n * k * 0.5 + n * k * (1 if mode == 0 else 2)
            print(f"probe mode {mode} tile {block_n}x{2 * half} warps {warps}: {t * 1e3:7.1f} us  "
                  f"{moved / t / 1e6:6.0f} GB/s", flush=True)
    # correctness of mode 3 against the reference dequantization
    _probe[(triton.cdiv(n, 64), triton.cdiv(k // 2, 32))](q.packed, q.scales, cb, out, n, k, MODE=3, BLOCK_N=64,
                                                           HALF=32, num_warps=4)
    ref = q.dequantize(torch.float32).to(torch.bfloat16)
    err = (out.float() - ref.float()).abs().max().item()
    print(f"mode 3 vs the reference: max abs diff {err:.2e} (0 on a GPU; one bf16 ulp under the interpreter)")


if __name__ == "__main__":
    main()
