"""LoRA on a quantized base: slipstream's fused NF4 + LoRA op against dense bf16 + LoRA (and bitsandbytes + peft
where installed), forward + backward, measured in the same run; and, on CPU, the peak memory of one training step
of a 1B-shaped Llama with and without train-qlora.

    python benchmarks/lora_linear.py                       # CUDA: Llama-3-8B layer shapes, 4096 tokens, r=16, bf16
    TRITON_INTERPRET=1 python benchmarks/lora_linear.py --smoke   # CPU: tiny shapes through the interpreter, to
                                                                  # check the script (timings meaningless)
    python benchmarks/lora_linear.py --cpu-memory          # CPU: peak RSS of a training step, dense vs NF4
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {"llama3-8b": [(4096, 4096), (4096, 14336), (14336, 4096)], "smoke": [(96, 200), (200, 64)]}


def _time(fn, device: str, reps: int) -> float:
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=max(reps, 20), return_mode="median") / 1e3
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def _lora_weights(k: int, n: int, r: int, device: str):
    a = (torch.randn(r, k, device=device) * k ** -0.5).to(torch.bfloat16).requires_grad_()
    b = (torch.randn(n, r, device=device) * 0.01).to(torch.bfloat16).requires_grad_()
    return a, b


def layer_speed(device: str, shapes, tokens: int, r: int, reps: int) -> None:
    from slipstream.kernels.lora_linear import lora_linear_op
    from slipstream.kernels.quant_formats import QuantSpec, quantize
    from slipstream.kernels.registry import grad_function

    # An optimized model runs the op's grad twin (backends/twins.py: implementation + formula in one
    # autograd.Function); calling the op itself also crosses torch.library's dispatcher (`same via dispatcher`).
    twin = grad_function(torch.ops.slipstream.lora_linear.default)

    try:
        import bitsandbytes as bnb  # noqa: F401
    except ImportError:
        bnb = None
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU (interpreter)'}; tokens {tokens}, r={r}, "
          f"bf16; bitsandbytes {'available' if bnb else 'not installed: that baseline is skipped'}")
    for k, n in shapes:
        w = (torch.randn(n, k, device=device) * k ** -0.5).to(torch.bfloat16)
        q = quantize(w, QuantSpec("nf4"))
        a, b = _lora_weights(k, n, r, device)
        x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(tokens, n, device=device, dtype=torch.bfloat16)

        def fused(op=twin):
            y = op(x, q.packed, q.scales, q.aux, "nf4", q.group, n, None, [x], [a], [b], [2.0])
            return torch.autograd.grad(y, (x, a, b), g)

        def dense():  # peft's LoRA linear on a bf16 base: base(x) + B(A(x)) * s
            y = F.linear(x, w) + F.linear(F.linear(x, a), b) * 2.0
            return torch.autograd.grad(y, (x, a, b), g)
        rows = {"slipstream nf4+lora": _time(fused, device, reps),
                "same via dispatcher": _time(lambda: fused(lora_linear_op), device, reps),
                "dense bf16 + lora": _time(dense, device, reps)}
        if bnb is not None and device == "cuda":
            rows["bnb nf4 + lora"] = _time(_bnb_step(w, x, a, b, g), device, reps)
        ours = rows["slipstream nf4+lora"]  # ratios are baseline time / ours: above 1 means ours is faster
        print(f"{k:>5} x {n:<5} " + "  ".join(f"{name} {t * 1e3:8.3f} ms ({t / ours:.2f}x)" for name, t in rows.items()))


def _bnb_step(w, x, a, b, g):
    import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4").to(w.device)

    def step():
        y = layer(x) + F.linear(F.linear(x, a), b) * 2.0
        return torch.autograd.grad(y, (x, a, b), g)
    return step


def _peak_rss_step(variant: str) -> None:
    """Child process: one training step of a 1B-shaped Llama; prints the peak RSS of the step alone (VmHWM is
    reset after the model is built and, for nf4, quantized, so building the dense weights does not count)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import slipstream
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000)
    model = get_peft_model(LlamaForCausalLM(config),  # fp32: CPU bf16 matmuls are too slow for a benchmark
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    slipstream.optimize(model, pipeline="train-qlora" if variant == "nf4" else "train", warmup=False)
    ids = torch.randint(0, config.vocab_size, (1, 16))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    print(peak * 1024)


def cpu_memory() -> None:
    peaks = {}
    for variant in ("dense", "nf4"):
        out = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True,
                             check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        peaks[variant] = int(out.stdout.strip().splitlines()[-1])
        print(f"{variant:>5}: peak RSS of one training step {peaks[variant] / 2**30:.2f} GiB", flush=True)
    print(f"nf4 / dense: {peaks['nf4'] / peaks['dense']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--cpu-memory", action="store_true")
    parser.add_argument("--child", choices=("dense", "nf4"), help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if args.child:
        return _peak_rss_step(args.child)
    if args.cpu_memory:
        return cpu_memory()
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--smoke runs the Triton kernels on CPU: set TRITON_INTERPRET=1")
        from slipstream.kernels import force_triton_on_cpu
        with force_triton_on_cpu():
            return layer_speed("cpu", SHAPES["smoke"], 17, 4, 1)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --smoke / --cpu-memory on CPU")
    layer_speed("cuda", SHAPES["llama3-8b"], 4096, 16, args.reps)


if __name__ == "__main__":
    main()
