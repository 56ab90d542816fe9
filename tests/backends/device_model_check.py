"""Every tiny test family optimized on one device, against its own unoptimized copy: the end-to-end GPU check.

    python tests/backends/device_model_check.py --device cuda     # on a GPU machine: the Triton kernels in place
    python tests/backends/device_model_check.py --device cpu      # the same code on the PyTorch references

Per family and dtype: logits and every parameter's gradient within the tolerance table, the attention kernels the
dispatcher picked, and (fp32) 12 greedy tokens identical to the unoptimized model's. Exit code 0 when all agree.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from models import SPINE_FAMILIES, UNNAMED_FAMILIES, build, token_batch  # noqa: E402

import slipstream  # noqa: E402
from slipstream.debug.tolerance import max_rel_error, tolerance  # noqa: E402


def _loss(model, ids):
    logits = model(ids).logits
    return logits, torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def _errors(model, reference, ids) -> float:
    """Largest relative error of `model`'s logits and parameter grads against `reference`'s (grads already set),
    parameters matched by name (a quantized model has no base weights among its parameters)."""
    ref = dict(reference.named_parameters())
    return max([max_rel_error(model.last_logits, reference.last_logits)]
               + [max_rel_error(p.grad, ref[n].grad.to(p.grad.dtype)) for n, p in model.named_parameters()
                  if p.grad is not None and ref[n].grad is not None])


def _step(model, ids):
    logits, loss = _loss(model, ids)
    loss.backward()
    model.last_logits = logits.detach()


def check(family: str, dtype: torch.dtype, device: str) -> bool:
    """fp32: optimized vs unoptimized within the table. bf16: the same, or, where bf16 rounding of two different
    algorithms parts them further, the optimized model no less accurate (1.2x) than eager against fp32 weights."""
    base = build(family, dtype=dtype).to(device)
    opt = slipstream.optimize(copy.deepcopy(base))
    ids = token_batch(batch=2, seq=40).to(device)
    _step(base, ids)
    _step(opt, ids)
    err = _errors(opt, base, ids)
    ok, detail = err <= tolerance(dtype).max_rel, ""
    if dtype != torch.float32:
        truth = copy.deepcopy(base).float()
        truth.zero_grad()
        _step(truth, ids)
        truth.last_logits = truth.last_logits.to(dtype)
        ours, eager = _errors(opt, truth, ids), _errors(base, truth, ids)
        ok = ok or ours <= 1.2 * eager
        detail = f"  vs fp32: optimized {ours:.2e}, eager {eager:.2e}"
    same_tokens = "-"
    if dtype == torch.float32:
        prompt = ids[:1, :6]
        kwargs = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
        with torch.no_grad():
            same = torch.equal(opt.generate(prompt, **kwargs), base.generate(prompt, **kwargs))
        ok, same_tokens = ok and same, str(same)
    kernels = sorted({impl for _, impl, _ in slipstream.report(opt).decisions()})
    print(f"{'ok ' if ok else 'BAD'} {family:<8} {str(dtype):<15} max rel err {err:.2e}  "
          f"generate identical {same_tokens:<5}  attention kernels {', '.join(kernels) or '-'}{detail}", flush=True)
    return ok


def check_qlora(family: str, dtype: torch.dtype, device: str) -> bool:
    """train-qlora (NF4 base + fused LoRA) against plain peft on the same base dequantized: logits and LoRA grads."""
    from peft import LoraConfig, get_peft_model

    from slipstream.modules import QuantLinear
    torch.manual_seed(0)
    model = get_peft_model(build(family, dtype=dtype), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    model = model.to(device)
    reference = copy.deepcopy(model)
    slipstream.optimize(model, pipeline="train-qlora")
    for path, module in model.named_modules():
        if isinstance(module, QuantLinear):
            reference.get_submodule(path).weight.data = module.dequantize()
    ids = token_batch(batch=2, seq=40).to(device)
    _step(model, ids)
    _step(reference, ids)
    err = _errors(model, reference, ids)
    ok = err <= tolerance(dtype).max_rel
    fused = slipstream.report(model).fused("fuse-lora-linear")
    print(f"{'ok ' if ok else 'BAD'} {family:<8} {str(dtype):<15} qlora max rel err {err:.2e}  lora linears fused "
          f"{fused}", flush=True)
    return ok and fused == 7 * model.config.num_hidden_layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--families", nargs="+", default=list(SPINE_FAMILIES + UNNAMED_FAMILIES))
    parser.add_argument("--qlora-families", nargs="+", default=["llama", "qwen3"])
    parser.add_argument("--qlora-dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"],
                        help="the QLoRA checks' dtypes (the same steps in each: the CPU smoke run takes one)")
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device")
        import transformers
        print(torch.cuda.get_device_name(), "torch", torch.__version__, "transformers", transformers.__version__)
    results = []
    for family in args.families:
        for dtype in (torch.float32, torch.bfloat16):
            try:
                results.append(check(family, dtype, args.device))
            except Exception:  # one family's failure must not hide the others' results
                print(f"ERR {family:<8} {str(dtype):<15}\n{traceback.format_exc(limit=-4)}", flush=True)
                results.append(False)
    for family in args.qlora_families:
        for dtype in (getattr(torch, name) for name in args.qlora_dtypes):
            try:
                results.append(check_qlora(family, dtype, args.device))
            except Exception:
                print(f"ERR {family:<8} {str(dtype):<15} qlora\n{traceback.format_exc(limit=-4)}", flush=True)
                results.append(False)
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
