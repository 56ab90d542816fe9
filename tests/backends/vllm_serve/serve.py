"""Serve checkpoints with the real vLLM and report what it generated: run with the vLLM venv's python.

    .venv-vllm/bin/python tests/backends/vllm_serve/serve.py jobs.json results.json

jobs.json: {"jobs": [{"name": ..., "model": <checkpoint dir>, "prompts": [text, ...], "max_tokens": 8,
"logprobs": 5, "max_lora_rank": 16 (optional: enables LoRA),
"runs": [{"name": "base"}, {"name": "adapter", "lora": <peft adapter dir>}]}, ...]}

One process serves every job in turn (importing vLLM is most of its start-up). Each job builds `LLM(model)`, and
each run generates greedily (temperature 0, `ignore_eos`). Text prompts are tokenized by vLLM's own tokenizer,
read from the checkpoint; prompts given as token-id lists skip the tokenizer (`skip_tokenizer_init`: loading a
151k-token tokenizer costs several seconds per engine). results.json is rewritten after every job: {name: {"load_s", "generate_s", "error",
"runs": {run: [{"prompt_token_ids", "token_ids", "logprobs", "top", "text"} per prompt]}}}; "error" holds
"<ExceptionType>: message" when building the LLM or generating failed (the job then has no or fewer runs).
Generated-token logprobs are vLLM's raw ones (before any sampling transform); `prompt_logprobs` is not used, as
it crashes together with LoRA on the CPU build.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback

# before vllm (and torch) is imported: one in-process engine; one thread and no thread pinning, as the test workers
# (the machine is small and shared with them: two threads spin-waiting for a busy core only slow each other down)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Room for 131k tokens of these tiny models; an explicit size also skips vLLM's warm-up pass, which only serves to
# size the cache. (VLLM_CPU_KVCACHE_SPACE takes whole GiB; with 1 GiB, building an engine took ~20 s, now ~3 s.)
KV_CACHE_BYTES = 64 << 20


def _outputs(outputs, logprobs: int) -> list[dict]:
    rows = []
    for out in outputs:
        gen = out.outputs[0]
        chosen, top = [], []
        for tok, step in zip(gen.token_ids, gen.logprobs):
            chosen.append(step[tok].logprob)
            best = sorted(step.items(), key=lambda kv: kv[1].rank)[:logprobs]
            top.append([[int(t), lp.logprob] for t, lp in best])
        rows.append({"prompt_token_ids": list(out.prompt_token_ids), "token_ids": list(gen.token_ids),
                     "logprobs": chosen, "top": top, "text": gen.text})
    return rows


def serve(job: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    result: dict = {"load_s": None, "generate_s": 0.0, "error": None, "runs": {}}
    llm = None
    try:
        start = time.monotonic()
        lora = {"enable_lora": True, "max_lora_rank": job["max_lora_rank"]} if job.get("max_lora_rank") else {}
        token_prompts = not isinstance(job["prompts"][0], str)
        llm = LLM(job["model"], dtype=job.get("dtype", "auto"), enforce_eager=True, max_model_len=256,
                  kv_cache_memory_bytes=KV_CACHE_BYTES, distributed_executor_backend="uni", seed=0,
                  skip_tokenizer_init=token_prompts, **lora)
        result["load_s"] = round(time.monotonic() - start, 2)
        params = SamplingParams(temperature=0.0, max_tokens=job.get("max_tokens", 8), ignore_eos=True,
                                logprobs=job.get("logprobs", 5), detokenize=not token_prompts)
        prompts = [{"prompt_token_ids": p} for p in job["prompts"]] if token_prompts else job["prompts"]
        for i, run in enumerate(job.get("runs", [{"name": "base"}])):
            request = LoRARequest(run["name"], i + 1, run["lora"]) if run.get("lora") else None
            start = time.monotonic()
            outputs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
            result["generate_s"] = round(result["generate_s"] + time.monotonic() - start, 2)
            result["runs"][run["name"]] = _outputs(outputs, job.get("logprobs", 5))
    except Exception as e:  # recorded for the test to judge (int4 is expected to fail on an AVX2-only CPU)
        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        del llm
        _release()
    return result


def _release() -> None:
    """Tear down the engine so the next job can build its own in this process."""
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001 - best effort; the next LLM() reports a real problem
        traceback.print_exc()


def main(jobs_path: str, results_path: str) -> None:
    jobs = json.load(open(jobs_path))["jobs"]
    results: dict = {}
    for job in jobs:
        print(f"[serve] {job['name']}: {job['model']}", file=sys.stderr, flush=True)
        results[job["name"]] = serve(job)
        tmp = results_path + ".partial"
        with open(tmp, "w") as f:
            json.dump(results, f)
        os.replace(tmp, results_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
