"""The transformers side of the real-vLLM tests: what a checkpoint directory holds, as fp32 tensors, and the
logprobs transformers gives the tokens vLLM generated.

`checkpoint_weights` reads every safetensors shard of a checkpoint (or peft adapter) directory and dequantizes
compressed-tensors' layouts from their definition (the compressed-tensors format spec, not slipstream's code):
- int-quantized / float-quantized (W8A8, fp8): `weight` (int8 / float8_e4m3fn) * `weight_scale` [N, 1];
- pack-quantized (int4/int8 weight-only): `weight_packed` int32 words holding 32/bits values each, lowest bits
  first, stored as q + 2^(bits-1); `weight_scale` [N, groups]; `weight_zero_point` (asymmetric) packed alike along N.
vLLM is then the independent reader: it must compute what transformers computes on these weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor


def _unpack(words: Tensor, bits: int, count: int, dim: int) -> Tensor:
    """int32 words -> unsigned values along `dim` (32/bits per word, lowest bits first), first `count` kept."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:
        w = w.t()
    vals = ((w[..., None] >> shifts) & ((1 << bits) - 1)).reshape(w.shape[0], -1)[:, :count]
    return vals.t() if dim == 0 else vals


def _dequantize(prefix: str, t: dict[str, Tensor], bits: int) -> Tensor:
    scale = t[prefix + "weight_scale"].float()
    if prefix + "weight_packed" not in t:  # int-quantized / float-quantized: weights stored directly
        return t[prefix + "weight"].float() * scale
    n, k = t[prefix + "weight_shape"].tolist()
    offset = 1 << (bits - 1)
    q = _unpack(t[prefix + "weight_packed"], bits, k, dim=1) - offset
    group = k // scale.shape[1]
    if prefix + "weight_zero_point" in t:
        q = q - (_unpack(t[prefix + "weight_zero_point"], bits, n, dim=0) - offset).repeat_interleave(group, 1)
    return q.float() * scale.repeat_interleave(group, dim=1)


def checkpoint_weights(directory: Path) -> tuple[dict[str, Tensor], set[str]]:
    """(name -> fp32 tensor for everything the directory's safetensors files hold, the names that were quantized):
    a quantized Linear's `weight_*` tensors become one dequantized `weight`."""
    tensors: dict[str, Tensor] = {}
    for shard in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(shard))
    config = Path(directory) / "config.json"
    bits = 8
    if config.exists():
        qc = json.loads(config.read_text()).get("quantization_config") or {}
        groups = list((qc.get("config_groups") or {}).values())
        if groups:
            bits = groups[0]["weights"]["num_bits"]
    out: dict[str, Tensor] = {}
    quantized: set[str] = set()
    for name, t in tensors.items():
        if name.endswith(".weight_scale"):
            prefix = name[: -len("weight_scale")]
            out[prefix + "weight"] = _dequantize(prefix, tensors, bits)
            quantized.add(prefix + "weight")
        elif not any(name.endswith(s) for s in ("weight_packed", "weight_shape", "weight_zero_point")) and \
                not (name.endswith(".weight") and name[: -len("weight")] + "weight_scale" in tensors):
            out[name] = t.float()
    return out, quantized


@torch.no_grad()
def logprobs_of(model, prompt_ids: list[int], token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """(logprob of each generated token, the best logprob at each step) under `model`, fp64 log-softmax."""
    ids = torch.tensor([prompt_ids + token_ids])
    lp = model(ids).logits[0, len(prompt_ids) - 1: -1].double().log_softmax(-1)
    chosen = lp.gather(1, torch.tensor(token_ids)[:, None])[:, 0]
    return chosen, lp.max(-1).values
