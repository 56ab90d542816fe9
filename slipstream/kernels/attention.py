"""`slipstream::attention` (softmax attention with GQA, causal / sliding-window / padding masks, soft-cap) and its
forward-with-lse and backward ops.

q [B, Hq, S, D], k/v [B, Hkv, T, D] with Hq % Hkv == 0 (query head h reads kv head h // (Hq // Hkv); k/v are
never repeated). Query i sits at absolute position T - S + i (bottom-right aligned, as with a KV cache). Key j is
visible iff key_padding[b, j] (bool [B, T], False = padding), and j <= T - S + i if causal, and
j > T - S + i - window if window > 0 (Hugging Face sliding_window). Scores are scale * q.k, then
softcap * tanh(scores / softcap) if softcap > 0 (Gemma 2), then masked. A query row with no visible key outputs 0
and gets zero gradients; its lse is +inf. Outputs are contiguous in q's dtype; lse is fp32 (fp64 for fp64 q).
Dropout (training): with dropout_p > 0 each probability is kept with probability 1 - dropout_p and scaled by
1 / (1 - dropout_p); the keep decisions are a pure function of `seed` (Philox in the Triton kernels, a seeded
torch.Generator in the reference), so the backward draws them again instead of storing a mask. The lse is the
dropout-free softmax's.

Ops: `attention_forward` -> (out, lse) carries the autograd formula used in training (lse is saved, never
differentiated); `attention` -> out is the single-node form graph passes emit. Its own autograd formula (reached
only when torch.ops.slipstream.attention is called directly with grads on) recomputes lse with a forward, so the
`attention()` wrapper routes grad-requiring calls through `attention_forward` instead.
"""
from typing import Optional

import torch
from torch import Tensor

from slipstream.kernels.dispatch import TRITON_DTYPES, select_triton
from slipstream.kernels.registry import call, define_op

# Decode kernel: few queries per kv head (group x S rows), many keys. Same cap as triton_attention's.
DECODE_MAX_QUERIES = 16
DECODE_MAX_ROWS = 64
DECODE_MIN_KEYS = 128
MAX_HEAD_DIM = 256


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor]) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must be 4-D "
                         "[B, H, S, D] with k and v of equal shape")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"attention: q {tuple(q.shape)} vs k {tuple(k.shape)}: B and D must match and Hq must be "
                         "a multiple of Hkv")
    if not q.is_floating_point() or q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"attention: q, k, v must share a floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_padding is not None and (key_padding.dtype != torch.bool or key_padding.shape != (k.shape[0], k.shape[2])):
        raise ValueError(f"attention: key_padding must be bool [B, T] = {(k.shape[0], k.shape[2])}, got "
                         f"{key_padding.dtype} {tuple(key_padding.shape)}")


def lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def select_attention_kernel(q: Tensor, k: Tensor, triton: Optional[bool] = None) -> str:
    """The kernel "flash" | "decode" | "reference" for these q/k (reads metadata only: fake and meta work).

    `triton` says whether Triton runs on this device; None asks `dispatch` (CUDA, or CPU when forced). Given
    explicitly the choice is a pure function of device/dtype/shapes, which is what a graph pass shows.
    Decode: S <= 16 queries whose Hq/Hkv x S rows fit one tile (<= 64), over T >= 128 keys.
    """
    triton = select_triton(q, k) if triton is None else triton
    if not triton or q.dtype not in TRITON_DTYPES or q.shape[-1] > MAX_HEAD_DIM:
        return "reference"
    s, t = q.shape[2], k.shape[2]
    group = q.shape[1] // max(k.shape[1], 1)
    if s <= DECODE_MAX_QUERIES and group * s <= DECODE_MAX_ROWS and t >= DECODE_MIN_KEYS:
        return "decode"
    return "flash"


def visible_mask(b: int, s: int, t: int, key_padding: Optional[Tensor], causal: bool, window: int,
                 device: torch.device) -> Tensor:
    """Bool [B or 1, 1, S, T]: query i may attend key j (the exact masks of the module docstring)."""
    pos = torch.arange(s, device=device)[:, None] + (t - s)
    j = torch.arange(t, device=device)[None, :]
    vis = torch.ones(s, t, dtype=torch.bool, device=device)
    if causal:
        vis = vis & (j <= pos)
    if window > 0:
        vis = vis & (j > pos - window)
    vis = vis[None, None]
    return vis & key_padding[:, None, None, :] if key_padding is not None else vis


def _reference_keep(q: Tensor, t: int, dropout_p: float, seed: int) -> Tensor:
    """[B, Hkv, G, S, T] keep mask of the reference path, from a torch.Generator seeded with `seed`."""
    b, hq, s, _ = q.shape
    gen = torch.Generator(device=q.device).manual_seed(seed)
    return torch.rand((b, hq, s, t), generator=gen, device=q.device) >= dropout_p


def _scores(q: Tensor, k: Tensor, key_padding, causal, scale, window, softcap) -> tuple[Tensor, Tensor, Tensor]:
    """(masked scores [B, Hkv, G, S, T], tanh of the soft-cap or None, visibility) in fp32 (fp64 for fp64)."""
    ct = lse_dtype(q)
    b, hq, s, d = q.shape
    hkv, t = k.shape[1], k.shape[2]
    qf = q.to(ct).reshape(b, hkv, hq // hkv, s, d)
    x = (qf @ k.to(ct)[:, :, None].transpose(-1, -2)) * scale  # GQA by broadcasting, no repeat_kv copy
    tanh = None
    if softcap > 0:
        tanh = torch.tanh(x / softcap)
        x = softcap * tanh
    vis = visible_mask(b, s, t, key_padding, causal, window, q.device)[:, :, None]
    return x.masked_fill(~vis, float("-inf")), tanh, vis


def attention_reference(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor], causal: bool,
                        scale: float, window: int, softcap: float, dropout_p: float = 0.0,
                        seed: int = 0) -> tuple[Tensor, Tensor]:
    """(out, lse) by explicit matmul / softmax in fp32 (fp64 for fp64 inputs)."""
    b, hq, s, d = q.shape
    x, _, _ = _scores(q, k, key_padding, causal, scale, window, softcap)
    lse = torch.logsumexp(x, -1)
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))  # empty rows: exp(-inf - inf) = 0, not NaN
    p = torch.exp(x - lse[..., None])
    if dropout_p > 0:
        p = p * _reference_keep(q, k.shape[2], dropout_p, seed).reshape(x.shape) / (1 - dropout_p)
    out = p @ v.to(x.dtype)[:, :, None]
    return out.reshape(b, hq, s, d).to(q.dtype).contiguous(), lse.reshape(b, hq, s)


def attention_backward_reference(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                 key_padding, causal, scale, window, softcap, dropout_p: float = 0.0,
                                 seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    b, hq, s, d = q.shape
    hkv = k.shape[1]
    x, tanh, _ = _scores(q, k, key_padding, causal, scale, window, softcap)
    ct = x.dtype
    g5 = (b, hkv, hq // hkv, s)
    p = torch.exp(x - lse.to(ct).reshape(g5)[..., None])
    go = grad.to(ct).reshape(*g5, d)
    dp = go @ v.to(ct)[:, :, None].transpose(-1, -2)
    if dropout_p > 0:
        kept = _reference_keep(q, k.shape[2], dropout_p, seed).reshape(x.shape) / (1 - dropout_p)
        dv = ((p * kept).transpose(-1, -2) @ go).sum(2)
        dp = dp * kept
    else:
        dv = (p.transpose(-1, -2) @ go).sum(2)
    delta = (go * out.to(ct).reshape(*g5, d)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    if tanh is not None:
        ds = ds * (1 - tanh * tanh)
    dq = (ds @ k.to(ct)[:, :, None]) * scale
    dk = (ds.transpose(-1, -2) @ q.to(ct).reshape(*g5, d)).sum(2) * scale
    return (dq.reshape(b, hq, s, d).to(q.dtype).contiguous(), dk.to(k.dtype).contiguous(),
            dv.to(v.dtype).contiguous())


def _attention_forward(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor], causal: bool, scale: float,
                       window: int, softcap: float, dropout_p: float, seed: int) -> tuple[Tensor, Tensor]:
    _check(q, k, v, key_padding)
    kind = select_attention_kernel(q, k)
    if kind == "decode" and dropout_p == 0:
        from slipstream.kernels.triton_attention import decode_forward

        return decode_forward(q, k, v, key_padding, causal, scale, window, softcap)
    if kind != "reference":  # dropout (training) always takes flash: decode has none
        from slipstream.kernels.triton_attention import flash_forward

        return flash_forward(q, k, v, key_padding, causal, scale, window, softcap, dropout_p, seed)
    return attention_reference(q, k, v, key_padding, causal, scale, window, softcap, dropout_p, seed)


def _attention_forward_fake(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor], causal: bool,
                            scale: float, window: int, softcap: float, dropout_p: float,
                            seed: int) -> tuple[Tensor, Tensor]:
    _check(q, k, v, key_padding)
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=lse_dtype(q))


def _attention(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor], causal: bool, scale: float,
               window: int, softcap: float, dropout_p: float, seed: int) -> Tensor:
    return _attention_forward(q, k, v, key_padding, causal, scale, window, softcap, dropout_p, seed)[0]


def _attention_fake(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor], causal: bool, scale: float,
                    window: int, softcap: float, dropout_p: float, seed: int) -> Tensor:
    _check(q, k, v, key_padding)
    return q.new_empty(q.shape)


def _attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        key_padding: Optional[Tensor], causal: bool, scale: float, window: int,
                        softcap: float, dropout_p: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    _check(q, k, v, key_padding)
    args = (grad_out, q, k, v, out, lse, key_padding, causal, scale, window, softcap, dropout_p, seed)
    if select_attention_kernel(q, k) != "reference":  # decode-sized calls too: the flash backward handles any S
        from slipstream.kernels.triton_attention_bwd import flash_backward

        return flash_backward(*args)
    return attention_backward_reference(*args)


def _attention_backward_fake(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                             key_padding: Optional[Tensor], causal: bool, scale: float, window: int,
                             softcap: float, dropout_p: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    _check(q, k, v, key_padding)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_forward(ctx, inputs, output) -> None:
    q, k, v, key_padding = inputs[:4]
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, key_padding, out, lse)
    ctx.options = inputs[4:]


def _backward_forward(ctx, grad_out: Tensor, _grad_lse: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    q, k, v, key_padding, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(grad_out, q, k, v, out, lse, key_padding, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None, None


def _setup_attention(ctx, inputs, output) -> None:
    q, k, v, key_padding = inputs[:4]
    ctx.save_for_backward(q, k, v, key_padding)
    ctx.options = inputs[4:]


def _backward_attention(ctx, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
    q, k, v, key_padding = ctx.saved_tensors
    # the lse the out-only op did not keep
    out, lse = call(torch.ops.slipstream.attention_forward.default, q, k, v, key_padding, *ctx.options)
    dq, dk, dv = attention_backward_op(grad_out, q, k, v, out, lse, key_padding, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_backward_op = define_op("attention_backward", _attention_backward, _attention_backward_fake)
attention_forward_op = define_op(
    "attention_forward", _attention_forward, _attention_forward_fake, _backward_forward, _setup_forward)
attention_op = define_op("attention", _attention, _attention_fake, _backward_attention, _setup_attention)


def attention(q: Tensor, k: Tensor, v: Tensor, key_padding: Optional[Tensor] = None, causal: bool = True,
              scale: Optional[float] = None, window: int = -1, softcap: float = 0.0, dropout_p: float = 0.0,
              seed: Optional[int] = None) -> Tensor:
    """dropout(softmax(mask(cap(scale * q k^T)))) v; see the module docstring. scale defaults to head_dim ** -0.5;
    with dropout_p > 0 and no seed, the seed is drawn from torch's default generator (torch.manual_seed
    reproduces a run)."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    args = (q, k, v, key_padding, bool(causal), float(q.shape[-1] ** -0.5 if scale is None else scale),
            int(window) if window > 0 else -1, float(softcap) if softcap > 0 else 0.0, float(dropout_p),
            int(seed or 0))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return call(torch.ops.slipstream.attention_forward.default, *args)[0]
    return call(torch.ops.slipstream.attention.default, *args)  # decode steps: the implementation
