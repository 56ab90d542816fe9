"""Compile every Triton kernel for a real GPU target (to cubin, via the ptxas bundled with triton), no GPU needed.

The interpreter tests prove the kernels' math; this proves the same source is valid compiled Triton for the
configurations the wrappers pick. It runs the real wrappers on `meta` tensors with each kernel swapped for a
recorder that compiles instead of launching. Run as a script in a process WITHOUT TRITON_INTERPRET (`@triton.jit`
must produce compiled JITFunctions); exits 77 when this triton has no CUDA backend.
"""
import os
import sys

import torch

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
H100_SMEM = 232448  # shared memory one block may use on an H100 (227 KB)


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {value!r}")


class _Recorder:
    """Stands in for `kernel` in `kernel[grid](*args, **kwargs)` and compiles that specialisation."""

    def __init__(self, fn, target, compiled: list):
        self.fn, self.target, self.compiled = fn, target, compiled

    def __getitem__(self, grid):
        return self._compile

    def _compile(self, *args, num_warps: int = 4, num_stages: int | None = None, enable_fp_fusion: bool = True,
                 **kwargs) -> None:
        import triton
        from triton.compiler import ASTSource

        bound = dict(zip(self.fn.arg_names, args), **kwargs)
        signature = {p.name: "constexpr" if p.is_constexpr else _arg_type(bound[p.name]) for p in self.fn.params}
        constexprs = {p.name: bound[p.name] for p in self.fn.params if p.is_constexpr}
        options = {"num_warps": num_warps, "enable_fp_fusion": enable_fp_fusion}
        if num_stages is not None:
            options["num_stages"] = num_stages
        kernel = triton.compile(ASTSource(self.fn, signature, constexprs), target=self.target, options=options)
        self.record(kernel, f"{self.fn.__name__} {constexprs} warps={num_warps}"
                            + (f" stages={num_stages}" if num_stages is not None else ""))

    def record(self, kernel, what: str) -> None:
        self.compiled.append(what)


class _SmemRecorder(_Recorder):
    """Also records each kernel's shared memory."""

    def record(self, kernel, what: str) -> None:
        self.compiled.append((what, kernel.metadata.shared))


def fits_h100(compiled: list, label: str, arch: int) -> int:
    """Print how many `label` kernels `compiled` ((what, shared bytes) pairs) holds and the largest shared memory;
    return 1 (after naming them) when any exceeds an H100's, else 0."""
    print(f"compiled {len(compiled)} {label} kernels for sm_{arch}; largest shared memory "
          f"{max(s for _, s in compiled)} bytes")
    too_big = [(what, shared) for what, shared in compiled if shared > H100_SMEM]
    for what, shared in too_big:
        print(f"exceeds H100 shared memory ({shared} > {H100_SMEM}): {what}", file=sys.stderr)
    return 1 if too_big else 0


def compile_with(modules, calls, arch: int, recorder=_Recorder) -> list | int:
    """Swap every `*_kernel` JITFunction of `modules` for `recorder`, run `calls`, return what was recorded;
    an int exit code instead when this process cannot compile (TRITON_INTERPRET set: 2, no CUDA backend: 77)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET", file=sys.stderr)
        return 2
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    if "nvidia" not in backends:
        return 77
    compiled: list = []
    target = GPUTarget("cuda", arch, 32)
    for module in modules:
        for name, value in list(vars(module).items()):
            if isinstance(value, JITFunction) and name.endswith("_kernel"):
                setattr(module, name, recorder(value, target, compiled))
    for call in calls:
        call()
    return compiled


def _meta(*shape: int, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _calls():
    from slipstream.kernels import triton_rms_norm as rn
    from slipstream.kernels import triton_rope as rp
    from slipstream.kernels import triton_swiglu as sw

    bf, f32 = torch.bfloat16, torch.float32
    x, w = _meta(8, 4096), _meta(4096)
    yield lambda: rn.rms_norm_forward(x, w, 1e-6, 0.0, True, bf)
    yield lambda: rn.rms_norm_forward(_meta(64, 128, dtype=f32), _meta(128, dtype=f32), 1e-6, 1.0, False, f32)
    yield lambda: rn.rms_norm_forward(_meta(4, 16384), _meta(16384, dtype=f32), 1e-6, 0.0, True, f32)
    yield lambda: rn.rms_norm_backward(x, x, w, 1e-6, 0.0, True)
    yield lambda: rn.rms_norm_backward(_meta(64, 128), _meta(64, 128), _meta(128), 1e-6, 1.0, False)
    gate, up = _meta(16, 2 * 11008).chunk(2, -1)
    for act in (None, "none", "tanh"):
        yield lambda act=act: sw.gated_forward(gate, up, act)
        yield lambda act=act: sw.gated_backward(gate, gate, up, act)
    yield lambda: sw.gated_forward(_meta(100, 97, dtype=f32), _meta(100, 97, dtype=f32), None)
    q, k, cos = _meta(2, 16, 32, 128).transpose(1, 2), _meta(2, 8, 16, 128), _meta(1, 16, 128)
    for backward in (False, True):
        yield lambda backward=backward: rp.rope_apply(q, k, cos, cos, backward)
    q, k, cos = _meta(2, 4, 8, 96, dtype=f32), _meta(2, 2, 8, 96, dtype=f32), _meta(2, 8, 32, dtype=f32)
    yield lambda: rp.rope_apply(q, k, cos, cos, False)


def main(arch: int = 90) -> int:
    import triton

    from slipstream.kernels import triton_rms_norm, triton_rope, triton_swiglu

    compiled = compile_with((triton_rms_norm, triton_rope, triton_swiglu), _calls(), arch)
    if isinstance(compiled, int):
        return compiled
    print(f"triton {triton.__version__}: compiled for sm_{arch}:", *compiled, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:])))
