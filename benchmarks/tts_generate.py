"""Qwen3-TTS VoiceDesign generation speed: codec frames per second, slipstream vs the unoptimized model.

    python benchmarks/tts_generate.py                                  # tiny random model, CPU, 1 thread
    python benchmarks/tts_generate.py --shape 1.7b --device cuda       # released 1.7B shapes, random bf16 weights
    python benchmarks/tts_generate.py --profile 30                     # then where each model's host time goes

Each run generates `--frames` frames greedily (talker + the nested code-predictor generate per frame) for one
prompt with a voice description and a language. Three rows, alternated run by run: the unoptimized model,
slipstream, and the same optimized model with every unit call through torch.compile's wrapper (direct calls off,
frontend/direct_call.py; that row also pays a dynamo config patch per call, ~5-10 us). Prints frames/s (best of
`--repeats`), the real-time factor (frames/s over 12.5, the codec's frame rate: > 1 is faster than real time), two
ratios (of the best times, and "paired": the median over repeats of each repeat's own ratio, which only compares
runs made back to back; on a shared 2-core VM single runs vary by +-15 %), and checks all produced identical
frames. A last line per row compares single frames: each run's median frame time (the interval between two of the
talker's decode steps: its forward, the nested code-predictor generate, the sampling), the ratio of the medians
per repeat, and the median and range of those ratios over repeats. A median frame ignores the bursts (a page
fault storm, another process) that land in some frames of a run and move its total; the range says how far
apart repeats still are.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

import slipstream
from slipstream.frontend import capture, direct_call, qwen3_tts

FRAME_RATE = 12.5  # codec frames per second of audio (12 Hz tokenizer)


def request(shape: str, device: str) -> dict:
    text = [5 + i % 200 for i in range(24)] if shape == "tiny" else [1000 + i for i in range(24)]
    voice = [9 + i % 200 for i in range(16)] if shape == "tiny" else [2000 + i for i in range(16)]
    specials = None if shape == "tiny" else dict(im_start_token_id=151644, im_end_token_id=151645)
    ids, instruct = qwen3_tts.prompt(text, voice, specials)
    return dict(input_ids=[ids.to(device)], instruct_ids=[instruct.to(device)], languages=["english"])


def fixed_length_config(shape: str):
    """The model config; for the released shape with random weights, an end-of-codes id no step can produce, so
    every run generates all its frames (the tiny config's already cannot stop early)."""
    cfg = qwen3_tts.config(shape)
    if shape == "1.7b":
        cfg.talker_config.codec_eos_token_id = cfg.talker_config.vocab_size
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "1.7b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then profile one 20-frame run of each model and print the N functions with the most "
                             "own time: where the host time goes")
    args = parser.parse_args()
    if args.frames < 3:
        parser.error("--frames must be at least 3 (per-frame times start at the second decode step)")
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))

    cfg = fixed_length_config(args.shape)
    reference = qwen3_tts.build(cfg, dtype=dtype, device=args.device)
    model = slipstream.optimize(qwen3_tts.build(cfg, dtype=dtype, device=args.device))
    req = request(args.shape, args.device)
    for m in (model, reference):  # warm-up: captures prefill/decode variants, fills allocator caches
        qwen3_tts.timed_greedy(m, req, 3)

    names = ("reference", "slipstream", "via torch.compile")
    times, frame_medians, outputs = {name: [] for name in names}, {name: [] for name in names}, {}
    for _ in range(args.repeats):
        for name in names:
            m = reference if name == "reference" else model
            direct_call.ENABLED = name == "slipstream"  # the third: every unit call through torch.compile's wrapper
            outputs[name], seconds, frame_seconds = timed_frames(m, req, args.frames)
            times[name].append(seconds)
            frame_medians[name].append(statistics.median(frame_seconds))
    direct_call.ENABLED = True
    best = {name: min(t) for name, t in times.items()}
    # each repeat runs the rows back to back: its ratios see the same machine state, so their median is robust to
    # the drift that moves single runs by +-15 % here
    paired = {name: statistics.median(repeat_ratios(times, name)) for name in names}
    frames = outputs["slipstream"].shape[0]
    fps = {name: frames / s for name, s in best.items()}
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, 1 thread"
    print(f"Qwen3-TTS {args.shape} VoiceDesign · {device} · {dtype} · {frames} frames x "
          f"{outputs['slipstream'].shape[1]} codebooks · best of {args.repeats} (ratio: of the bests; paired: "
          "median over repeats of each repeat's ratio)")
    for name in names:
        print(f"  {name:<17} {fps[name]:8.2f} frames/s  RTF {fps[name] / FRAME_RATE:6.2f}x real time  "
              f"({best[name]:.3f} s)  ratio {fps[name] / fps['reference']:.3f}  paired {paired[name]:.3f}")
    print("  per frame (median frame time of each run; ratio of the medians, median over repeats [range]):")
    for name in names:
        ratios = repeat_ratios(frame_medians, name)
        print(f"  {name:<17} {statistics.median(frame_medians[name]) * 1e3:8.3f} ms  ratio "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")
    same = [torch.equal(outputs[n], outputs["reference"]) for n in names]
    diverged = "" if all(same) else f" (slipstream's first differing frame: {first_difference(outputs)})"
    print(f"  identical frames: {all(same)}{diverged}")
    calls = capture.call_counts(model)
    print(f"  unit calls: {calls['direct']} run directly, {calls['compiled']} through torch.compile "
          "(captures, warm-up)")
    if args.profile:
        for name, m in (("reference", reference), ("slipstream", model)):
            profile(name, lambda m=m: qwen3_tts.timed_greedy(m, req, min(args.frames, 20)), args.profile)


def timed_frames(model: torch.nn.Module, req: dict, frames: int) -> tuple[torch.Tensor, float, list[float]]:
    """`timed_greedy`'s (codes, seconds), plus the seconds of each decode frame: the intervals between the starts
    of the talker's forward calls (one per frame; the first call, the prefill, and its frame are left out, so
    `frames` must be at least 3, which main checks)."""
    starts: list[float] = []
    hook = model.talker.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    try:
        codes, seconds = qwen3_tts.timed_greedy(model, req, frames)
    finally:
        hook.remove()
    return codes, seconds, [b - a for a, b in zip(starts[1:], starts[2:])]


def repeat_ratios(seconds: dict[str, list[float]], name: str) -> list[float]:
    """Per repeat, the reference's time over row `name`'s (> 1: `name` is faster)."""
    return [r / t for r, t in zip(seconds["reference"], seconds[name])]


def first_difference(outputs: dict) -> str:
    """Index of the first frame where slipstream's codes differ from the reference's, as 'i of n'."""
    a, b = outputs["slipstream"], outputs["reference"]
    n = min(a.shape[0], b.shape[0])
    rows = [i for i in range(n) if not torch.equal(a[i], b[i])]
    return f"{rows[0] if rows else n} of {n}"


def profile(name: str, run, top: int) -> None:
    """cProfile one run: the functions with the most own time (Python and the C calls it makes)."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.runcall(run)
    print(f"--- {name}: top {top} by own time")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
