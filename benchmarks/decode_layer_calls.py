"""One decoder layer's decode step, call by call: where Qwen3-TTS generation's host time goes, and what replaying
the step as a CUDA graph would save.

tts_generate.py found generation host-bound on the GPU machine (~11 ms per decode pass of the 1.7B talker's 28
layers, against far less GPU work). This script takes one real decode call of a talker layer and of a code
predictor layer (caught during a short generate), then times that same call repeatedly (the layer's KV cache is
reset after each call, so every call sees the same cache length):
- eager: the unoptimized model's layer;
- slipstream: the optimized model's layer (our dispatcher, dynamo's guards and transformed code, the rewritten
  graph);
- its stages on their own: the guard check that finds the captured variant, that check followed by the
  variant's transformed code (a direct call without the dispatcher), the transformed code (with the graph), and
  the rewritten graph on the inputs dynamo hands it (the fused ops, no per-call wrapper);
- on CUDA, each of eager and the rewritten graph captured once in a CUDA graph and replayed: the host cost a
  decode without per-call launches would have.
Host: microseconds until the call returns; wall: until the device is done (the 10th percentile of many calls,
the steadiest figure on a shared machine; rows alternate in 5 rounds, best round shown). The question it
answers: is per-layer CUDA-graph replay worth its design (static KV cache, static input buffers), i.e. would it
lift issue 7's ratio towards 1.5x?

    python benchmarks/decode_layer_calls.py                                # tiny model, CPU (no graph rows)
    python benchmarks/decode_layer_calls.py --shape 1.7b --device cuda     # released 1.7B shapes, bf16
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import transformers

import slipstream
from slipstream.frontend import qwen3_tts
from slipstream.frontend.layer_cache import substitute
from tts_generate import fixed_length_config, request

ROUNDS = 5  # alternating rounds of calls per row; each row reports its best round
LAYERS = ("talker.model.layers.0", "talker.code_predictor.model.layers.0")


def catch_decode_call(model: torch.nn.Module, path: str, req: dict) -> tuple[torch.nn.Module, tuple, dict]:
    """(layer, args, kwargs) of the first one-token call of the layer at `path` in a short greedy generate."""
    layer = model.get_submodule(path)
    caught: list[tuple[tuple, dict]] = []
    own = layer.__dict__.get("forward")  # slipstream's dispatcher, or None (the class's forward)
    inner = layer.forward

    def spy(*args, **kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not caught and hidden is not None and hidden.shape[1] == 1:
            caught.append((args, dict(kwargs)))
        return inner(*args, **kwargs)
    layer.forward = spy
    try:
        qwen3_tts.timed_greedy(model, req, 3)
    finally:
        if own is None:
            del layer.forward
        else:
            layer.forward = own
    if not caught:
        raise RuntimeError(f"{path} made no one-token call in generate()")
    return layer, *caught[0]


def cache_reset(kwargs: dict, index: int) -> Callable[[], None]:
    """A function putting the layer's cache tensors back as they were (a decode call appends to them)."""
    layer_cache = kwargs["past_key_values"].layers[index]
    keys, values = layer_cache.keys, layer_cache.values

    def reset():
        layer_cache.keys, layer_cache.values = keys, values
    return reset


def per_call(fn: Callable[[], object], reset: Callable[[], None], device: str, calls: int) -> tuple[float, float]:
    """(host, wall) microseconds per call: 10th percentiles over `calls` calls, each timed on its own."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    hosts, walls = [], []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        fn()
        hosts.append(time.perf_counter() - start)
        sync()
        walls.append(time.perf_counter() - start)
        reset()
    p10 = lambda xs: sorted(xs)[len(xs) // 10] * 1e6  # noqa: E731
    return p10(hosts), p10(walls)


def call_parts(layer: torch.nn.Module, index: int, args: tuple, kwargs: dict) -> dict[str, Callable[[], object]]:
    """The stages of a slipstream layer call as separate callables: DirectEntries' guard check that finds the
    captured variant, that check followed by the variant's transformed code (what a direct call runs, without
    the dispatcher around it), the transformed code (with the graph), and the rewritten graph alone (on the
    inputs the transformed code gives it)."""
    shared = layer.forward.slipstream_entries()[0]
    args2, kwargs2, _ = substitute(args, kwargs, index, True)
    runner = shared._find((layer, *args2), kwargs2)
    if runner is None:
        raise RuntimeError("no captured variant serves this call directly")
    name = next(n for n in runner.__globals__ if n.startswith("__compiled_fn"))
    graph = runner.__globals__[name]
    seen = []
    runner.__globals__[name] = lambda *a: seen.append(a) or graph(*a)
    try:
        runner(layer, *args2, **kwargs2)
    finally:
        runner.__globals__[name] = graph
    return {"guard check (finds the variant)": lambda: shared._find((layer, *args2), kwargs2),
            "guard check, then transformed code": lambda: shared._find((layer, *args2), kwargs2)(
                layer, *args2, **kwargs2),
            "transformed code + graph": lambda: runner(layer, *args2, **kwargs2),
            "slipstream graph only": lambda: graph(*seen[0])}


def cuda_graph(fn: Callable[[], object], reset: Callable[[], None]) -> Callable[[], None]:
    """`fn` captured in a CUDA graph (after warm-up on a side stream, as torch.cuda.graphs documents); its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
            reset()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    reset()
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "1.7b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cfg = fixed_length_config(args.shape)
    reference = qwen3_tts.build(cfg, dtype=dtype, device=args.device)
    model = slipstream.optimize(qwen3_tts.build(cfg, dtype=dtype, device=args.device))
    req = request(args.shape, args.device)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, 1 thread"
    print(f"Qwen3-TTS {args.shape} · {device} · {dtype} · us per decode call of one layer (10th percentile of "
          f"{args.calls}): host (until it returns) / wall (until the device is done)")
    with torch.no_grad():
        for path in LAYERS:
            index = int(path.rsplit(".", 1)[1])
            eager_layer, eager_args, eager_kwargs = catch_decode_call(reference, path, req)
            layer, layer_args, layer_kwargs = catch_decode_call(model, path, req)
            eager_reset, reset = cache_reset(eager_kwargs, index), cache_reset(layer_kwargs, index)
            rows = [("eager", lambda: eager_layer(*eager_args, **eager_kwargs), eager_reset),
                    ("slipstream", lambda: layer(*layer_args, **layer_kwargs), reset)]
            rows += [(name, fn, reset) for name, fn in call_parts(layer, index, layer_args, layer_kwargs).items()]
            if args.device == "cuda":
                for name, (_, fn, undo) in (("eager, CUDA graph replay", rows[0]),
                                            ("slipstream graph, CUDA graph replay", rows[-1])):
                    try:
                        rows.append((name, cuda_graph(fn, undo), undo))
                    except Exception as error:  # e.g. a host sync inside the step: say so, time the rest
                        print(f"  {name}: capture failed: {type(error).__name__}: {str(error)[:200]}")
            print(f"{path} (cache length {cache_length(layer_kwargs, index)})")
            times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in rows}
            for _ in range(ROUNDS):  # rows alternate, so drift of the machine's speed hits them alike
                for name, fn, undo in rows:
                    fn()
                    undo()
                    times[name].append(per_call(fn, undo, args.device, args.calls // ROUNDS))
            best = {name: (min(h for h, _ in t), min(w for _, w in t)) for name, t in times.items()}
            for name, (host, wall) in best.items():
                whole = "" if name == "guard check (finds the variant)" else \
                    f"  ({best['eager'][1] / wall:.2f}x eager's wall)"
                print(f"  {name:<38} host {host:8.1f}  wall {wall:8.1f}{whole}", flush=True)


def cache_length(kwargs: dict, index: int) -> int:
    return int(kwargs["past_key_values"].layers[index].keys.shape[-2])


if __name__ == "__main__":
    main()
