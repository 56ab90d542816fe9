"""`gc_paused()`: the cyclic garbage collector off while we make millions of short-lived objects that form no cycles
worth collecting at once: a tokenizer.json parsed (by us, or by transformers while AutoTokenizer loads one), a unit
traced by dynamo. Each allocation burst makes the collector rescan the whole heap, torch's and transformers' objects
included, again and again: Llama 3's AutoTokenizer load takes ~2x the CPU time with it, json.loads ~8x, optimize()
plus a first call's capture ~1.3x (Gemma 2 on this 2-core VM: 66 s -> 51 s, medians of 4 alternated runs). Cycles
made meanwhile wait for the next collection after the block."""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_auto_tokenizer(path):
    """transformers' AutoTokenizer.from_pretrained(path) with the collector paused: it parses tokenizer.json in
    Python too (~2x faster on Llama 3's)."""
    from transformers import AutoTokenizer

    with gc_paused():
        return AutoTokenizer.from_pretrained(path)
