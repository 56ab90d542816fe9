"""Qwen3-TTS VoiceDesign through slipstream: codec frames for a text plus a voice description (and a language),
with and without slipstream; prints both, the speedup and whether they are identical.

    python examples/tts_voice_design.py                       # tiny random model (no download)
    python examples/tts_voice_design.py --checkpoint DIR      # a local Qwen3-TTS-12Hz-1.7B-VoiceDesign directory

Needs `pip install --no-deps qwen-tts==0.1.1` (the model code; its audio stack is not needed). Frames are codec
codes (16 codebooks at 12.5 frames/s on the released model); turning them into audio needs the 12 Hz codec.
"""
from __future__ import annotations

import argparse

import torch
import transformers

import slipstream
from slipstream.frontend import qwen3_tts

TEXT = "Hello from slipstream. This sentence becomes codec frames."
VOICE = "A calm, warm female voice, speaking slowly and clearly."


def request_for(checkpoint: str | None, text: str, voice: str, language: str) -> dict:
    if checkpoint is None:  # tiny vocabulary: stand-in token ids for the text and the description
        ids, instruct = qwen3_tts.prompt([5 + (ord(c) % 200) for c in text[:24]], [9 + (ord(c) % 200) for c in voice[:16]])
    else:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(checkpoint)
        ids = tok(f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt").input_ids
        instruct = tok(f"<|im_start|>user\n{voice}<|im_end|>\n", return_tensors="pt").input_ids
    return dict(input_ids=[ids], instruct_ids=[instruct], languages=[language])


def load(checkpoint: str | None, device: str):
    if checkpoint is None:
        cfg = qwen3_tts.config()
        return qwen3_tts.build(cfg, device=device), qwen3_tts.build(cfg, device=device)
    return qwen3_tts.load(checkpoint, device=device), qwen3_tts.load(checkpoint, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="local Qwen3-TTS VoiceDesign checkpoint directory")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--voice", default=VOICE, help="natural-language voice description")
    parser.add_argument("--language", default="english")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()  # generate() notes pad_token_id on every call

    reference, model = load(args.checkpoint, args.device)
    request = request_for(args.checkpoint, args.text, args.voice, args.language)
    slipstream.optimize(model)
    qwen3_tts.timed_greedy(model, request, 2)          # first calls capture the graphs (prefill, decode)
    qwen3_tts.timed_greedy(reference, request, 2)
    want, t_ref = qwen3_tts.timed_greedy(reference, request, args.frames)
    got, t_opt = qwen3_tts.timed_greedy(model, request, args.frames)

    print(f"voice: {args.voice!r} · language: {args.language} · {got.shape[0]} frames x {got.shape[1]} codebooks")
    print("reference codes (first 5 frames):\n", want[:5])
    print("slipstream codes (first 5 frames):\n", got[:5])
    print(f"reference {want.shape[0] / t_ref:.1f} frames/s · slipstream {got.shape[0] / t_opt:.1f} frames/s · "
          f"speedup {t_ref / t_opt:.2f}x · identical: {torch.equal(got, want)}")
    print(slipstream.explain(model).split("\n\n")[0])


if __name__ == "__main__":
    main()
