"""Canonical ops (`torch.ops.slipstream.*`): custom ops with fake impls, autograd, a PyTorch reference and Triton
kernels. Importing this package registers the ops; it never imports Triton (see `dispatch`).
"""
from slipstream.kernels.attention import attention, select_attention_kernel
from slipstream.kernels.attention_varlen import attention_varlen
from slipstream.kernels.dispatch import force_triton_on_cpu, use_triton
from slipstream.kernels.lora_linear import lora_linear
from slipstream.kernels.mrope import mrope_select
from slipstream.kernels.rms_norm import rms_norm
from slipstream.kernels.rope import rope
from slipstream.kernels.swiglu import geglu, swiglu

__all__ = [
    "attention", "attention_varlen", "force_triton_on_cpu", "geglu", "lora_linear", "mrope_select", "rms_norm", "rope",
    "select_attention_kernel", "swiglu", "use_triton",
]
