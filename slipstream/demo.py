"""The built-in default model: a tiny random Llama with the real Llama 3 tokenizer (shipped gzipped in the
package, so nothing is downloaded). Used by examples/demo.py, the tests and the benchmarks."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from slipstream.gc_pause import load_auto_tokenizer

TOKENIZER_DIR = Path(__file__).parent / "data" / "tokenizers" / "llama3"


def _cache_dir() -> Path:
    root = Path(os.environ.get("SLIPSTREAM_CACHE", Path(tempfile.gettempdir()) / "slipstream-cache"))
    digest = hashlib.sha256((TOKENIZER_DIR / "tokenizer.json.gz").read_bytes()).hexdigest()[:12]
    return root / f"llama3-tokenizer-{digest}"


def tokenizer_path() -> Path:
    """A directory `AutoTokenizer.from_pretrained` reads: the shipped files, tokenizer.json unpacked once."""
    target = _cache_dir()
    if not (target / "tokenizer.json").exists():
        staging = Path(tempfile.mkdtemp(prefix="slipstream-tok-"))
        with gzip.open(TOKENIZER_DIR / "tokenizer.json.gz", "rb") as src, open(staging / "tokenizer.json", "wb") as dst:
            shutil.copyfileobj(src, dst)
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(TOKENIZER_DIR / name, staging / name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(target)  # atomic: a concurrent or interrupted unpack never leaves a half file
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer():
    return load_auto_tokenizer(tokenizer_path())


def demo_model(layers: int = 2, hidden: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny random Llama over the Llama 3 vocabulary (128,256 tokens; tied embeddings keep it ~33 MB)."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0,
                         bos_token_id=128000, eos_token_id=128001)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
