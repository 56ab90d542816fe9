"""slipstream on the built-in default model: optimize, train a step, generate, and show what changed.

    python examples/demo.py [--layers N] [--tokens N]

Numbers printed are measured in this run; the reference is the same model without slipstream.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import slipstream
from slipstream.debug.tolerance import max_rel_error, tolerance
from slipstream.demo import demo_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer = load_tokenizer()
    model = demo_model(layers=args.layers)
    reference = copy.deepcopy(model)
    messages = [{"role": "user", "content": "Explain graph rewriting in one sentence."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    mask = torch.ones_like(ids)
    print(f"model: tiny random Llama, {args.layers} layers, vocab {model.config.vocab_size}; "
          f"prompt: {ids.shape[1]} tokens (Llama 3 chat template)")

    start = time.perf_counter()
    opt = slipstream.optimize(model)
    print(f"slipstream.optimize(): {time.perf_counter() - start:.2f} s (capture + rewrite, first forward included)\n")
    print(slipstream.explain(opt), "\n")

    opt.train(), reference.train()
    out, want = opt(input_ids=ids, labels=ids), reference(input_ids=ids, labels=ids)
    out.loss.backward(), want.loss.backward()
    grad_err = max(max_rel_error(p.grad, q.grad) for p, q in zip(opt.parameters(), reference.parameters()))
    tol = tolerance(torch.float32).max_rel
    print(f"training step: loss {out.loss.item():.6f} vs reference {want.loss.item():.6f}; "
          f"max grad rel err {grad_err:.2e} (tolerance {tol:.0e})")

    opt.eval(), reference.eval()
    greedy = dict(attention_mask=mask, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                  pad_token_id=tokenizer.eos_token_id)
    timings = {}
    for name, m in (("slipstream", opt), ("reference", reference)):
        runs = []
        for _ in range(2):  # the first call captures the decode graphs; the second is steady state
            start = time.perf_counter()
            runs.append((m.generate(ids, **greedy), time.perf_counter() - start))
        timings[name] = (runs[-1][0], runs[0][1], runs[1][1])
    (got, first, steady), (exp, _, ref_steady) = timings["slipstream"], timings["reference"]
    print(f"generate {args.tokens} tokens: identical = {torch.equal(got, exp)}; first call {first:.2f} s "
          f"(captures decode graphs), then {steady:.2f} s vs reference {ref_steady:.2f} s "
          f"(CPU: PyTorch reference kernels, no speedup expected here)")
    print("text:", repr(tokenizer.decode(got[0, ids.shape[1]:])))
    if not torch.equal(got, exp) or grad_err > tol:
        raise SystemExit("demo FAILED: slipstream and reference disagree")


if __name__ == "__main__":
    main()
