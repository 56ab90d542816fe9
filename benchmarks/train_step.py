"""Training-step time of a small causal LM: slipstream vs the unoptimized model (forward + backward + AdamW).

    python benchmarks/train_step.py                         # tiny Qwen3-shaped model, CPU, 1 thread
    python benchmarks/train_step.py --lora                  # peft LoRA (r=8) on every linear of both models
    python benchmarks/train_step.py --device cuda --hidden 1024 --layers 8 --seq 512

Rows alternate step by step; the paired ratio is the median over repeats of each repeat's own ratio (runs made
back to back), next to the ratio of the best times. Losses of the two models are checked equal within fp32
tolerance on the first step (same weights, same batch).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

import slipstream


def build(args, device: str) -> torch.nn.Module:
    config = Qwen3Config(vocab_size=512, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=args.hidden // 4, max_position_embeddings=max(256, args.seq))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device).train()
    if args.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                 init_lora_weights=False))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--lora", action="store_true", help="peft LoRA (r=8) on every linear")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"reference": build(args, args.device), "slipstream": slipstream.optimize(build(args, args.device))}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    ids = torch.randint(0, 512, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(args.device)

    def step(name: str) -> tuple[float, float]:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = models[name](input_ids=ids, labels=ids).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, loss.item()

    first = {name: step(name)[1] for name in models}  # also captures the training variant
    torch.testing.assert_close(first["slipstream"], first["reference"], rtol=1e-5, atol=1e-5)
    for name in models:  # warm-up
        step(name)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name in models:
            times[name].append(step(name)[0])
    best = {name: min(t) for name, t in times.items()}
    paired = statistics.median(r / s for r, s in zip(times["reference"], times["slipstream"]))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, 1 thread"
    print(f"train step{' (LoRA r=8)' if args.lora else ''} · {device} · hidden {args.hidden}, {args.layers} layers, "
          f"batch {args.batch} x {args.seq} · best of {args.repeats}")
    for name in models:
        print(f"  {name:<11} {best[name] * 1e3:8.2f} ms")
    print(f"  speedup: {best['reference'] / best['slipstream']:.3f} (of the bests), {paired:.3f} (paired median); "
          f"first-step losses equal: {first['slipstream']:.6f}")


if __name__ == "__main__":
    main()
