"""Cost of slipstream.optimize() against torch.compile's (Inductor) first call, on tiny-width Llama models.

    python benchmarks/optimize_overhead.py [--layers 8 16 32 64] [--skip-inductor]

Both timings include one forward pass (optimize() warms up: it captures and rewrites every unit on a sample
batch; Inductor compiles on its first call). Inductor's caches are disabled so its number is a cold compile.
Prints each ratio and slipstream's time per layer (flat per-layer cost = linear growth). Also the first
training step after optimize() (it captures the training variant) next to an eager step, and a training step at a
new sequence length (captures start static: a size that changes is captured again, symbolic), so no capture cost
hides.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

import slipstream  # noqa: E402


def tiny_llama(layers: int):
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--skip-inductor", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids = torch.randint(0, 256, (2, 8))
    print(f"torch {torch.__version__}, 1 thread; batch 2 x 8 tokens; times in seconds")
    longer = torch.randint(0, 256, (2, 13))
    print(f"{'layers':>6} {'optimize':>9} {'per layer':>9} {'1st step':>9} {'new length':>10} {'eager step':>10} "
          f"{'inductor':>9} {'ratio':>7}")
    for layers in args.layers:
        torch._dynamo.reset()
        model = tiny_llama(layers)
        ours = timed(lambda: slipstream.optimize(model, example_inputs={"input_ids": ids}))
        model.train()
        first_step = timed(lambda: model(input_ids=ids, labels=ids).loss.backward())
        new_length = timed(lambda: model(input_ids=longer, labels=longer).loss.backward())
        slipstream.restore(model)
        eager_step = timed(lambda: model(input_ids=ids, labels=ids).loss.backward())
        inductor = float("nan")
        if not args.skip_inductor:
            torch._dynamo.reset()
            compiled = torch.compile(tiny_llama(layers), mode="default")
            with torch.no_grad():
                inductor = timed(lambda: compiled(input_ids=ids))
        ratio = ours / inductor
        print(f"{layers:>6} {ours:>9.2f} {ours / layers:>9.3f} {first_step:>9.2f} {new_length:>10.2f} "
              f"{eager_step:>10.2f} {inductor:>9.2f} {ratio:>6.1%}", flush=True)


if __name__ == "__main__":
    main()
