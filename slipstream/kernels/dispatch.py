"""Pick the Triton kernel or the PyTorch reference for one call of a canonical op.

CUDA tensors always take Triton. CPU tensors take the reference unless Triton is forced (env
`SLIPSTREAM_TRITON_ON_CPU=1` or `with force_triton_on_cpu():`), which is how the tests run the GPU kernels
under the Triton interpreter.

How Triton 3.x reads TRITON_INTERPRET (checked on triton 3.9): `triton.knobs.runtime.interpret` re-reads the
environment on every access (no caching at `import triton`), and `@triton.jit` consults it when it *decorates*:
with it set the function becomes an `InterpretedFunction`, otherwise a compiled `JITFunction`. A launch never
looks at it again. So the variable must be set before our `triton_*.py` modules are first imported (they are
imported lazily, on the first forced call), and a kernel module imported without it stays compiled for the rest
of the process. `check_launchable` turns that case into a clear error instead of a crash inside the driver.

Interpreter caveats (triton 3.9): fp32 -> bf16 casts truncate instead of rounding to nearest even as the GPU does,
so interpreted bf16 results may sit one bf16 ulp below the GPU's (fp16 casts round correctly); and
`block_mask & scalar_mask` yields an int32 mask that loads reject, so kernels build masks from blocks only.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

# Dtypes the kernels compute in (fp32 math, fp32 accumulation). Anything else (fp64) takes the reference.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Same spellings triton's getenv_bool accepts.
_TRUE = {"1", "true", "on", "yes", "y"}

_force_depth = 0
_force_lock = threading.Lock()


def _env_flag(name: str) -> bool:
    value = os.environ.get(name)  # runs per op call on CPU: the common unset case returns before any string work
    return value is not None and value.strip().lower() in _TRUE


@contextlib.contextmanager
def force_triton_on_cpu() -> Iterator[None]:
    """Run the Triton kernels (under the interpreter) for CPU tensors inside this block. Nests."""
    global _force_depth
    with _force_lock:
        _force_depth += 1
    try:
        yield
    finally:
        with _force_lock:
            _force_depth -= 1


def triton_forced_on_cpu() -> bool:
    return _force_depth > 0 or _env_flag("SLIPSTREAM_TRITON_ON_CPU")


def use_triton(t: torch.Tensor) -> bool:
    """True when the op should run its Triton kernel for tensors on `t`'s device."""
    if t.is_cuda:  # an attribute read, several times cheaper than t.device.type (this runs per op call)
        return True
    if not triton_forced_on_cpu() or t.device.type != "cpu":
        return False
    if not _env_flag("TRITON_INTERPRET"):
        raise RuntimeError(
            "Triton was forced on CPU tensors (SLIPSTREAM_TRITON_ON_CPU=1 or force_triton_on_cpu()), but CPU tensors "
            "can only run under the Triton interpreter: set TRITON_INTERPRET=1 in the environment before the "
            "process first imports slipstream's Triton kernels."
        )
    return True


def select_triton(*tensors: torch.Tensor) -> bool:
    """`use_triton` on the first tensor, restricted to dtypes the kernels support."""
    return use_triton(tensors[0]) and all(t.dtype in TRITON_DTYPES for t in tensors)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t.to(dtype)` without the call when it would return `t` itself: a no-op `.to` still costs ~3-5 us of host
    time, and the references and autograd formulas run per op call."""
    return t if t.dtype == dtype else t.to(dtype)


def check_launchable(kernel: object, t: torch.Tensor) -> None:
    """Raise if a compiled (non-interpreted) kernel is about to be launched on CPU tensors."""
    if t.device.type != "cpu":
        return
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(
            f"Triton kernel {getattr(kernel, '__name__', kernel)} was compiled for the GPU: its module was imported "
            "before TRITON_INTERPRET=1 was set. Set TRITON_INTERPRET=1 before anything imports slipstream's kernels."
        )
