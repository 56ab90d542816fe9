"""What a dump's `repro.py` runs: rebuild the model the dump came from, rerun the same pipeline on it, print the
graph diff and the run-time decisions; exit 1 if a rewrite is out of tolerance.

The model: a checkpoint directory, else a random model (seed 0) of the config.json saved in the dump. Two kinds
are known by their config's `model_type`: Qwen3-TTS (`qwen3_tts`, loaded without the audio stack and exercised by
a short greedy generate(), since its units only run inside generation) and any Hugging Face causal LM (exercised
by optimize()'s own warm-up forward).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

TTS_MODEL_TYPE = "qwen3_tts"
TTS_FRAMES = 3  # enough for prefill and decode variants of the talker and the code predictor


def load(config_dir: Path, checkpoint: str | None) -> nn.Module:
    """The checkpoint's model if `checkpoint` holds a config.json, else a seed-0 random model of `config_dir`'s."""
    source = Path(checkpoint) if checkpoint and (Path(checkpoint) / "config.json").is_file() else None
    config = json.loads(((source or config_dir) / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") == TTS_MODEL_TYPE:
        from ..frontend import qwen3_tts
        if source is not None:
            return qwen3_tts.load(source)
        return qwen3_tts.build(qwen3_tts.config_from_dict(config), seed=0)
    from transformers import AutoConfig, AutoModelForCausalLM
    if source is not None:
        return AutoModelForCausalLM.from_pretrained(source, dtype="auto").eval()
    hf_config = AutoConfig.from_pretrained(config_dir)
    dtype = getattr(hf_config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    return model.eval()


def exercise(model: nn.Module) -> None:
    """Run what optimize()'s warm-up cannot: a Qwen3-TTS model's units run only inside generate()."""
    if getattr(model.config, "model_type", "") != TTS_MODEL_TYPE:
        return
    from ..frontend import qwen3_tts
    cfg = model.config
    specials = dict(im_start_token_id=cfg.im_start_token_id, im_end_token_id=cfg.im_end_token_id)
    ids, instruct = qwen3_tts.prompt(list(range(5, 21)), list(range(9, 17)), specials)
    languages = cfg.talker_config.codec_language_id or {}
    request = dict(input_ids=[ids], instruct_ids=[instruct], languages=[next(iter(languages), "auto")])
    with torch.random.fork_rng():
        qwen3_tts.timed_greedy(model, request, TTS_FRAMES)


def main(dump_dir: Path, checkpoint: str | None, verify: bool, argv: list[str]) -> int:
    import slipstream
    from .report import decision_lines

    torch.set_num_threads(1)
    pipeline = (dump_dir / "pipeline.txt").read_text(encoding="utf-8").strip()
    model = slipstream.optimize(load(dump_dir, argv[0] if argv else checkpoint), pipeline=pipeline, verify=verify)
    exercise(model)
    report = slipstream.report(model)
    print(slipstream.diff(model), end="")
    decisions = [line for name in report.pass_names for line in decision_lines(report.decisions(name))]
    if decisions:
        print("\nrun-time decisions:\n" + "\n".join(decisions))
    return 1 if any(not c.ok for c in report.checks) else 0
