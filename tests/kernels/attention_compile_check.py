"""Compile the attention kernels for sm_90 (no GPU needed), as cuda_compile_check.py does for the other kernels,
and check each compiled configuration fits an H100's shared memory (227 KB per block).

Run as a script WITHOUT TRITON_INTERPRET (`[arch] [--all]`); exits 77 when this triton has no CUDA backend.
"""
import sys

import torch

import cuda_compile_check as ccc

ccc._TYPES.setdefault(torch.int8, "i8")  # the key-padding mask the wrappers pass
ccc._TYPES.setdefault(torch.int32, "i32")  # cu_seqlens


# (dtype, head_dim, both option variants?, varlen too?, query length). By default every tile config of
# _fwd_config/_bwd_config once (short and long sequences), both option variants (plain causal; window, soft-cap and
# padding) on bf16 D=64, the rest with every option on, varlen once, fp16 once (its tiles are bf16's: fp16 D=80 pads
# to D=128's short-sequence tiles); about 1.5 minutes on a fast machine, 8 on a slow one. `--all` compiles every
# combination (about 5 minutes on a fast machine).
_DEFAULT = (
    (torch.bfloat16, 64, True, False, 300), (torch.float16, 80, False, True, 300),
    (torch.bfloat16, 256, False, False, 300), (torch.bfloat16, 128, False, False, 2048),
    (torch.float32, 64, False, False, 300),
)
_ALL = tuple((dtype, d, True, True, s) for dtype in (torch.bfloat16, torch.float16, torch.float32)
             for d in (64, 80, 96, 128, 256) for s in (300, 2048))


def _calls(configs):
    from slipstream.kernels import triton_attention as fwd
    from slipstream.kernels import triton_attention_bwd as bwd
    from slipstream.kernels import triton_attention_varlen as var

    meta = ccc._meta
    kp = torch.empty(2, 300, dtype=torch.bool, device="meta")
    for dtype, d, variants, varlen, s in configs:
        q, k = meta(2, 8, s, d, dtype=dtype), meta(2, 2, s, d, dtype=dtype)
        lse = meta(2, 8, s, dtype=torch.float32)
        options = ((True, -1, 0.0, None), (False, 128, 50.0, kp)) if variants else ((True, 128, 50.0, kp),)
        for causal, window, softcap, pad in options:
            opts = (pad, causal, d**-0.5, window, softcap)
            yield lambda q=q, k=k, o=opts: fwd.flash_forward(q, k, k, *o)
            yield lambda q=q, k=k, o=opts: fwd.decode_forward(q[:, :, :4], k, k, *o)
            yield lambda q=q, k=k, lse=lse, o=opts: bwd.flash_backward(q, q, k, k, q, lse, *o)
            if varlen:
                packed_q, packed_k, cu = q[0].transpose(0, 1), k[0].transpose(0, 1), meta(3, dtype=torch.int32)
                var_opts = (cu, cu, 200, 200, *opts[1:])
                yield lambda q=packed_q, k=packed_k, o=var_opts: var.varlen_forward(q, k, k, *o)
                yield lambda q=packed_q, k=packed_k, lse=lse[0], o=var_opts: var.varlen_backward(
                    q, q, k, k, q, lse, *o)


def main(arch: int = 90, every: bool = False) -> int:
    from slipstream.kernels import triton_attention, triton_attention_bwd, triton_attention_varlen

    compiled = ccc.compile_with((triton_attention, triton_attention_bwd, triton_attention_varlen),
                                _calls(_ALL if every else _DEFAULT), arch, ccc._SmemRecorder)
    return compiled if isinstance(compiled, int) else ccc.fits_h100(compiled, "attention", arch)


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:] if a != "--all"), every="--all" in sys.argv))
