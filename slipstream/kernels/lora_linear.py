"""`slipstream::quant_linear` (a linear layer on a quantized weight) and `slipstream::lora_linear` (a dense or
quantized base linear plus any number of LoRA adapters), with `slipstream::quant_linear_grad_input` (dy @ W for a
quantized W) as the backward's only custom kernel.

A base is carried as (base, scales, aux, fmt, group): fmt "dense" means `base` is the [N, K] weight itself and
scales/aux are empty; the quantized formats use the layouts of docs/quantization.md. An adapter i is (xs[i], a[i],
b[i], scalings[i]): its input (x itself, or the model's dropout of x: dropout stays a node of the graph so its RNG
is peft's), A [r, K], B [N, r] and the scale. Output = x @ W.T + bias + sum_i scalings[i] * (xs[i] @ A.T) @ B.T.

Reference path (CPU): exactly peft's sequence of ops and roundings, so CPU results equal the unfused model's.
Triton path (CUDA, or forced on CPU under the interpreter), by batch size:
- up to FUSED_MAX_ROWS rows (decode): the quantized weight is dequantized tile by tile in registers inside one
  matmul kernel that also adds the LoRA product (`xa @ B_cat.T`, xa = the adapters' scaled A-projections side by
  side) and the bias; the dequantized weight is never stored.
- more rows (prefill, training): the layer's weight is dequantized by the Triton kernel into a transient buffer,
  freed as soon as the matmul returns, and the matmul runs in cuBLAS (as bitsandbytes and unsloth do): one
  layer's dense weight at a time, never the model's. Measured on an H200 (BENCHMARKS.md), the in-register kernel
  reached only 40-80 TFLOP/s at 4096 rows, and from 16 rows on the buffer was faster.
A dense base takes cuBLAS.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from slipstream.kernels.dispatch import as_dtype, select_triton
from slipstream.kernels.registry import define_op

DENSE = "dense"
FUSED_MAX_ROWS = 8  # above this many rows the Triton path dequantizes into a transient buffer + cuBLAS (see top)


def _check(x: Tensor, base: Tensor, fmt: str, out_features: int, xs: list[Tensor], a: list[Tensor],
           b: list[Tensor], scalings: list[float]) -> None:
    from slipstream.kernels.quant_formats import FORMATS

    if fmt != DENSE and fmt not in FORMATS:
        raise ValueError(f"lora_linear: unknown weight format {fmt!r}; use {DENSE!r} or one of {FORMATS}")
    if fmt == DENSE and tuple(base.shape) != (out_features, x.shape[-1]):
        raise ValueError(f"lora_linear: dense weight {tuple(base.shape)} does not fit x's last dim {x.shape[-1]} "
                         f"and out_features {out_features}")
    if not (len(xs) == len(a) == len(b) == len(scalings)):
        raise ValueError(f"lora_linear: {len(xs)} adapter inputs, {len(a)} A, {len(b)} B, {len(scalings)} scalings")
    for i, (xi, ai, bi) in enumerate(zip(xs, a, b)):
        if xi.shape != x.shape or ai.shape[1] != x.shape[-1] or bi.shape != (out_features, ai.shape[0]):
            raise ValueError(f"lora_linear: adapter {i} shapes x {tuple(xi.shape)}, A {tuple(ai.shape)}, "
                             f"B {tuple(bi.shape)} do not fit x {tuple(x.shape)} -> {out_features} features")


def out_dtype(x: Tensor, b: list[Tensor]) -> torch.dtype:
    """peft adds each adapter's output to the base's: fp32 adapters on a bf16 base promote the sum to fp32."""
    dtype = x.dtype
    for bi in b:
        dtype = torch.promote_types(dtype, bi.dtype)
    return dtype


def base_weight(base: Tensor, scales: Tensor, aux: Tensor, fmt: str, group: int, out_features: int,
                in_features: int, dtype: torch.dtype) -> Tensor:
    """The base weight as a dense [N, K] tensor of `dtype` (reference path, merging and export)."""
    if fmt == DENSE:
        return base.to(dtype)
    if base.device.type == "cuda":  # the Triton dequantize reads every format
        from slipstream.kernels.triton_quant_linear import dequantize as triton_dequantize

        return triton_dequantize(base, scales, aux, fmt, group, out_features, in_features, dtype)
    from slipstream.kernels.quant_formats import dequantize

    return dequantize(base, scales, aux, fmt, group, out_features, in_features, dtype)


def _reference(x, base, scales, aux, fmt, group, out_features, bias, xs, a, b, scalings) -> Tensor:
    """peft's own computation: base linear, then each adapter's B(A(x_i)) * s added in x's dtype."""
    w = base_weight(base, scales, aux, fmt, group, out_features, x.shape[-1], x.dtype)
    y = F.linear(x, w, bias)
    for xi, ai, bi, si in zip(xs, a, b, scalings):
        y = y + F.linear(F.linear(as_dtype(xi, ai.dtype), ai), bi) * si
    return y


def _in_register(rows: int) -> bool:
    """Whether the Triton path runs the in-register kernels for this many rows (else buffer + cuBLAS, see top)."""
    return rows <= FUSED_MAX_ROWS


def _side_by_side(parts: list[Tensor]) -> Tensor:
    """The adapters' [rows, r_i] parts as one [rows, sum r_i] matrix; one adapter as it is (a cat would copy it:
    one more launch per call)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _triton(x, base, scales, aux, fmt, group, out_features, bias, xs, a, b, scalings) -> Tensor:
    """The Triton path: the adapters' A-projections (M x r, cheap) first, then one in-register kernel for base +
    LoRA + bias, or (more rows) a transiently dequantized base in cuBLAS plus the LoRA product."""
    from slipstream.kernels.triton_quant_linear import quant_matmul

    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    xa = lora_b = None
    if a:
        xa = as_dtype(_side_by_side([F.linear(as_dtype(xi.reshape(-1, k), ai.dtype), ai) * si
                                     for xi, ai, si in zip(xs, a, scalings)]), x.dtype)
        lora_b = _side_by_side([as_dtype(bi, x.dtype) for bi in b])
    bias = None if bias is None else as_dtype(bias, x.dtype)
    if _in_register(x2.shape[0]):
        y = quant_matmul(x2.contiguous(), base, scales, aux, fmt, group, out_features, k, lora_xa=xa, lora_b=lora_b,
                         bias=bias)
    else:
        y = F.linear(x2, base_weight(base, scales, aux, fmt, group, out_features, k, x.dtype), bias)
        if xa is not None:
            y = y.addmm_(xa, lora_b.t())
    return as_dtype(y.reshape(*x.shape[:-1], out_features), out_dtype(x, b))


def _use_kernel(x: Tensor, fmt: str) -> bool:
    return fmt != DENSE and select_triton(x)


def _lora_linear(x: Tensor, base: Tensor, scales: Optional[Tensor], aux: Optional[Tensor], fmt: str, group: int,
                 out_features: int, bias: Optional[Tensor], xs: list[Tensor], a: list[Tensor], b: list[Tensor],
                 scalings: list[float]) -> Tensor:
    _check(x, base, fmt, out_features, xs, a, b, scalings)
    impl = _triton if _use_kernel(x, fmt) else _reference
    return impl(x, base, scales, aux, fmt, group, out_features, bias, xs, a, b, scalings).contiguous()


def _lora_linear_fake(x: Tensor, base: Tensor, scales: Optional[Tensor], aux: Optional[Tensor], fmt: str, group: int,
                      out_features: int, bias: Optional[Tensor], xs: list[Tensor], a: list[Tensor],
                      b: list[Tensor], scalings: list[float]) -> Tensor:
    _check(x, base, fmt, out_features, xs, a, b, scalings)
    return x.new_empty((*x.shape[:-1], out_features), dtype=out_dtype(x, b))


def _grad_input(grad: Tensor, base: Tensor, scales: Tensor, aux: Tensor, fmt: str, group: int,
                in_features: int) -> Tensor:
    """dy @ W for a quantized W: [..., N] -> [..., K]; on the Triton path by batch size as the forward (see top)."""
    n = grad.shape[-1]
    if select_triton(grad) and _in_register(grad.numel() // max(n, 1)):
        from slipstream.kernels.triton_quant_linear import quant_matmul_t

        dx = quant_matmul_t(grad.reshape(-1, n).contiguous(), base, scales, aux, fmt, group, n, in_features)
        return dx.reshape(*grad.shape[:-1], in_features)
    w = base_weight(base, scales, aux, fmt, group, n, in_features, grad.dtype)
    return (grad @ w).contiguous()


def _grad_input_fake(grad: Tensor, base: Tensor, scales: Tensor, aux: Tensor, fmt: str, group: int,
                     in_features: int) -> Tensor:
    return grad.new_empty((*grad.shape[:-1], in_features))


quant_linear_grad_input_op = define_op("quant_linear_grad_input", _grad_input, _grad_input_fake)


def _setup(ctx, inputs, output) -> None:
    x, base, scales, aux, fmt, group, out_features, bias, xs, a, b, scalings = inputs
    ctx.meta = (fmt, group, out_features, list(scalings), bias is not None, len(xs))
    ctx.base_needs_grad = base.requires_grad and fmt == DENSE
    ctx.has_quant = fmt != DENSE
    ctx.save_for_backward(x, base, *((scales, aux) if fmt != DENSE else ()), *xs, *a, *b)


def _backward(ctx, grad: Tensor):
    fmt, group, out_features, scalings, has_bias, n_adapters = ctx.meta
    x, base, *rest = ctx.saved_tensors
    scales, aux = (rest.pop(0), rest.pop(0)) if ctx.has_quant else (None, None)
    xs, a, b = rest[:n_adapters], rest[n_adapters:2 * n_adapters], rest[2 * n_adapters:]
    k = x.shape[-1]
    dx = dw = dbias = None
    if ctx.needs_input_grad[0]:
        gx = as_dtype(grad, x.dtype)  # the base linear ran in x's dtype (a promoted sum only adds fp32 adapters)
        if fmt == DENSE:
            dx = gx @ as_dtype(base, x.dtype)
        else:
            dx = quant_linear_grad_input_op(gx, base, scales, aux, fmt, group, k)
    if ctx.base_needs_grad:
        dw = as_dtype(as_dtype(grad.reshape(-1, out_features).t(), x.dtype) @ x.reshape(-1, k), base.dtype)
    if has_bias:
        dbias = as_dtype(grad.reshape(-1, out_features).sum(0), x.dtype)
    dxs, da, db = [], [], []
    for xi, ai, bi, si in zip(xs, a, b, scalings):  # peft's graph: h = x_i A^T, y += s * h B^T
        xi2, g2 = as_dtype(xi.reshape(-1, k), ai.dtype), as_dtype(grad.reshape(-1, out_features), bi.dtype)
        h = xi2 @ ai.t()
        dh = as_dtype((g2 @ bi) * si, ai.dtype)
        db.append(as_dtype((g2.t() @ as_dtype(h, bi.dtype)) * si, bi.dtype))
        da.append(as_dtype(dh.t() @ xi2, ai.dtype))
        dxs.append(as_dtype(dh @ ai, xi.dtype).reshape(xi.shape))
    # torch.library compares this with the inputs' pytree, where a float list is one leaf but an empty list a list
    return dx, dw, None, None, None, None, None, dbias, dxs, da, db, (None if scalings else [])


lora_linear_op = define_op("lora_linear", _lora_linear, _lora_linear_fake, _backward, _setup)


def lora_linear(x: Tensor, base: Tensor, bias: Optional[Tensor] = None, adapters=(), *,
                scales: Optional[Tensor] = None, aux: Optional[Tensor] = None, fmt: str = DENSE, group: int = 0,
                out_features: Optional[int] = None) -> Tensor:
    """Friendly form: `adapters` is a sequence of (x_i, A, B, scaling)."""
    n = base.shape[0] if out_features is None else out_features
    xs, a, b, s = (list(t) for t in zip(*adapters)) if adapters else ([], [], [], [])
    return lora_linear_op(x, base, scales, aux, fmt, group, n, bias, xs, a, b, [float(v) for v in s])


def _quant_linear(x: Tensor, packed: Tensor, scales: Tensor, aux: Tensor, fmt: str, group: int,
                  out_features: int, bias: Optional[Tensor]) -> Tensor:
    return _lora_linear(x, packed, scales, aux, fmt, group, out_features, bias, [], [], [], [])


def _quant_linear_fake(x: Tensor, packed: Tensor, scales: Tensor, aux: Tensor, fmt: str, group: int,
                       out_features: int, bias: Optional[Tensor]) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _setup_quant(ctx, inputs, output) -> None:
    x, packed, scales, aux, fmt, group, out_features, bias = inputs
    ctx.meta = (fmt, group, x.shape[-1], bias is not None)
    ctx.save_for_backward(packed, scales, aux)


def _backward_quant(ctx, grad: Tensor):
    fmt, group, k, has_bias = ctx.meta
    packed, scales, aux = ctx.saved_tensors
    dx = quant_linear_grad_input_op(grad, packed, scales, aux, fmt, group, k) if ctx.needs_input_grad[0] else None
    dbias = grad.reshape(-1, grad.shape[-1]).sum(0) if has_bias and ctx.needs_input_grad[7] else None
    return dx, None, None, None, None, None, None, dbias


quant_linear_op = define_op("quant_linear", _quant_linear, _quant_linear_fake, _backward_quant, _setup_quant)
