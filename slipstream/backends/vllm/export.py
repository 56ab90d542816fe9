"""export_vllm: a model (in memory or a checkpoint directory) -> a checkpoint directory vLLM serves.

Plan every output tensor from shapes alone (dense tensors in the export dtype; quantized Linears as the tensors
compressed.planned names), shard the plan, then stream: each tensor is computed (cast, or quantized / converted from
the model's own packed weights) just before its bytes are written. Everything goes into a hidden temp directory,
renamed to `out` only at the end (writer.staging), so nothing half-written is ever at `out`.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from slipstream.backends.errors import ExportError

from . import LORA_MODES, Scheme, scheme as lookup_scheme
from .adapter import MAX_LORA_RANK

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _dtype(dtype: Any) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one vLLM checkpoints use; choose float32, bfloat16 or float16")
        return dtype
    if str(dtype) not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: float32, bfloat16, float16")
    return _DTYPES[str(dtype)]


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def linear_weights(config) -> set[str]:
    """Weight names of the architecture's nn.Linear modules except the output head (built on the meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return {f"{p}.weight" for p, m in skeleton.named_modules()
            if isinstance(m, torch.nn.Linear) and p.split(".")[-1] != "lm_head"}


class Plan:
    """Output tensors in order, and how to compute each one."""

    def __init__(self, source, scheme: Optional[Scheme], dtype: torch.dtype, tied: bool, keep_reference: bool):
        from .compressed import check_shape, planned, reuse_refusal
        from .writer import Planned

        self.source, self.scheme, self.dtype = source, scheme, dtype
        self.tensors: list[Planned] = []
        self.notes: list[str] = []
        self.reference: Optional[dict[str, torch.Tensor]] = {} if keep_reference else None
        self._quantized: dict[str, str] = {}    # output name -> source weight name
        self._reused: dict[str, Any] = getattr(source, "quantized", {})
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        targets = linear_weights(source.config) if scheme is not None else set()
        requantized = []
        names = sorted(set(source.names()) | set(self._reused), key=_natural)
        for name in names:
            if tied and name == "lm_head.weight":
                continue
            shape = tuple(self._reused[name].shape) if name in self._reused else source.shape(name)
            if name in targets:
                check_shape(name, shape, scheme)
                if name in self._reused and reuse_refusal(self._reused[name], scheme):
                    requantized.append((name, reuse_refusal(self._reused[name], scheme)))
                prefix = name.removesuffix(".weight")
                for suffix, (dt, sh) in planned(shape, scheme).items():
                    self.tensors.append(Planned(f"{prefix}.{suffix}", dt, sh))
                    self._quantized[f"{prefix}.{suffix}"] = name
            else:
                if name in self._reused:
                    self.notes.append(f"{name} was quantized in the model but vLLM keeps it dense "
                                      "(compressed-tensors ignore list): written dequantized")
                stored = self._reused[name].dtype if name in self._reused else source.dtype(name)
                self.tensors.append(Planned(name, dtype if stored.is_floating_point else stored, shape))
        if requantized:
            self.notes.append(f"{len(requantized)} quantized weight(s) of the model did not fit {scheme.name} "
                              f"({requantized[0][1]}): dequantized and quantized again, which adds error")
            warnings.warn(f"vLLM export: {self.notes[-1]}", stacklevel=3)
        reused = len([n for n in self._reused if n in targets]) - len(requantized)
        if reused:
            self.notes.append(f"{reused} weight(s) written from the model's own packed {scheme.ours} weights "
                              "(no re-quantization)")

    def produce(self, t) -> torch.Tensor:
        name = self._quantized.get(t.name)
        if name is None:
            data = self._dense(t.name)
            return data.to(t.dtype) if data.is_floating_point() else data
        prefix = name.removesuffix(".weight")
        if prefix not in self._pending:
            self._pending[prefix] = self._compress(name)
        parts = self._pending[prefix]
        data = parts.pop(t.name[len(prefix) + 1:])
        if not parts:
            del self._pending[prefix]
        return data

    def _dense(self, name: str) -> torch.Tensor:
        if name in self._reused:
            return self._reused[name].dequantize(self.dtype)
        return self.source.load(name)

    def _compress(self, name: str) -> dict[str, torch.Tensor]:
        from .compressed import compress, quantize_weight, reuse_refusal

        qw = self._reused.get(name)
        if qw is None or reuse_refusal(qw, self.scheme):
            weight = self.source.load(name) if qw is None else qw.dequantize(torch.float32)
            qw = quantize_weight(weight, self.scheme)
        if self.reference is not None:
            self.reference[name] = qw.dequantize(torch.float32).to(self.dtype)
        return compress(qw, self.scheme)


def _source(model: Any, from_disk: bool, lora: str, scheme: Optional[Scheme]):
    from slipstream.backends.source import CheckpointSource, ModelSource

    if from_disk:
        source = CheckpointSource(model)
        if getattr(source.config, "quantization_config", None) is not None:
            raise ExportError(f"{model} is already a quantized checkpoint; export from the unquantized model")
        return source
    return ModelSource(model, adapters=(lora == "merge"), keep_quantized=scheme is not None)


def _export_dtype(source, dtype: Optional[torch.dtype]) -> torch.dtype:
    if dtype is not None:
        return dtype
    names = source.names()
    embed = [n for n in names if n.endswith("embed_tokens.weight")] or names
    found = source.dtype(embed[0])
    return found if found in _DTYPES.values() else torch.float32


def export_vllm(model: Any, out: str | Path, quant: Optional[str] = None, *, lora: str = "merge",
                tokenizer: Any = None, chat_template: Optional[str] = None, shard_size: int | str = "5GB",
                overwrite: bool = False, verify: bool = False, dtype: Any = None,
                max_lora_rank: int = MAX_LORA_RANK, progress: bool = True) -> Path:
    """See slipstream.backends.exporter.export (format="vllm") and docs/vllm.md."""
    from . import adapter as adapters
    from . import layout
    from .writer import check_target, parse_size, shard, staging, write_shard

    scheme = lookup_scheme(quant)
    if lora not in LORA_MODES:
        raise ValueError(f"unknown lora mode {lora!r}; choose 'merge' (fold into the weights) or 'adapter'")
    out, dtype, size = Path(out), _dtype(dtype), parse_size(shard_size)
    check_target(out, overwrite)
    from_disk = isinstance(model, (str, Path))
    if from_disk and lora == "adapter":
        raise ExportError("lora='adapter' needs an in-memory peft model; a checkpoint directory has no adapter to "
                          "write apart (export it with lora='merge', the default)")
    adapter = adapters.active_adapter(model, max_lora_rank) if lora == "adapter" else None
    source = _source(model, from_disk, lora, scheme)
    dtype = _export_dtype(source, dtype)
    tied = bool(getattr(source.config, "tie_word_embeddings", False))
    plan = Plan(source, scheme, dtype, tied, keep_reference=verify and scheme is not None)
    if not from_disk and scheme is None and getattr(source, "quantized", None) == {} and _has_quantlinear(model):
        plan.notes.append("the model's quantized weights were dequantized (quant=None writes dense weights)")
    if tokenizer is None and from_disk:
        try:
            tokenizer = source.tokenizer()
        except ExportError:
            tokenizer = None
    if tokenizer is None:
        warnings.warn("vLLM export without a tokenizer: vLLM needs one to serve this directory; pass tokenizer=... "
                      "(or serve with --tokenizer)", stacklevel=3)
    shards = shard(plan.tensors, size)
    names = layout.shard_names(len(shards))
    bar = _progress(sum(t.nbytes for t in plan.tensors), progress)
    with staging(out, overwrite) as tmp:
        for file, tensors in zip(names, shards):
            write_shard(tmp / file, tensors, plan.produce, lambda t: bar.update(t.nbytes) if bar else None)
        if len(shards) > 1:
            weight_map = {t.name: file for file, tensors in zip(names, shards) for t in tensors}
            (tmp / "model.safetensors.index.json").write_text(
                layout.index_json(weight_map, sum(t.nbytes for t in plan.tensors)))
        (tmp / "config.json").write_text(layout.config_json(source.config, dtype, scheme))
        (tmp / "generation_config.json").write_text(layout.generation_config_json(model, source.config, from_disk))
        files = layout.save_tokenizer(tokenizer, chat_template, tmp) if tokenizer is not None else []
        if adapter is not None:
            _write_adapter(model, adapter, dtype, tmp / "adapter")
        info = _card_info(model, out, source, scheme, dtype, lora, plan.notes, files)
        if verify:
            info["parity"] = _verify(model, from_disk, plan, source, tmp, dtype)
        (tmp / "README.md").write_text(layout.model_card(info))
        if bar is not None:
            bar.close()
    return out


def _has_quantlinear(model) -> bool:
    from slipstream.modules import QuantLinear
    return any(isinstance(m, QuantLinear) for m in model.modules())


def _write_adapter(model, adapter, dtype: torch.dtype, directory: Path) -> None:
    from .adapter import adapter_config_json, adapter_tensors
    from .writer import Planned, write_shard

    name, config = adapter
    tensors = adapter_tensors(model, name, dtype)
    directory.mkdir()
    planned = [Planned(k, v.dtype, tuple(v.shape)) for k, v in sorted(tensors.items(), key=lambda kv: _natural(kv[0]))]
    write_shard(directory / "adapter_model.safetensors", planned, lambda t: tensors[t.name])
    (directory / "adapter_config.json").write_text(adapter_config_json(config))


def _card_info(model, out: Path, source, scheme, dtype, lora: str, notes: list[str], tokenizer_files) -> dict:
    import slipstream

    from . import layout

    pipeline = "none (checkpoint directory)"
    if not isinstance(model, (str, Path)):
        from slipstream.backends.module import REPORT_ATTR
        report = getattr(model, REPORT_ATTR, None)
        pipeline = report.pipeline if report is not None else "none (not optimized)"
    quant = None
    if scheme is not None:
        quant = {"scheme": scheme.name, "format": scheme.format, "weights": scheme.weights,
                 "input_activations": scheme.input_activations, "ignore": ["lm_head"]}
    return {"name": out.name, "slipstream_version": slipstream.__version__, "pipeline": pipeline,
            "architectures": layout.architectures(source.config), "dtype": layout.dtype_name(dtype),
            "quantization": quant, "lora": {"merge": "merged into the weights", "adapter":
                                            "adapter directory adapter/ (peft format)"}[lora],
            "tokenizer_files": tokenizer_files, "notes": notes, "parity": None}


def _verify(model, from_disk: bool, plan: Plan, source, directory: Path, dtype: torch.dtype) -> dict:
    """Max logit difference of the reloaded export against the source (quantized: the source architecture run on
    the dequantized weights we quantized to, computed by our own formats' code, not read back from the files)."""
    from transformers import AutoModelForCausalLM

    from .verify import max_abs_diff

    if plan.scheme is None:
        reference = AutoModelForCausalLM.from_pretrained(model, dtype=dtype) if from_disk else model
        what = "the source model" if not from_disk else "the source checkpoint (transformers)"
    else:
        reference = _dequantized_reference(plan, source, directory, dtype)
        what = "the source model run on our dequantized weights"
    result = max_abs_diff(reference, directory, dtype)
    reader = "transformers" + (" + compressed-tensors" if plan.scheme is not None else "")
    if (directory / "adapter").is_dir():
        reader += " + peft (adapter)"
    return {**result, "reader": reader, "reference": what}


def _dequantized_reference(plan: Plan, source, directory: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    state = {name: (plan.reference[name] if name in plan.reference else plan._dense(name))
             for name in sorted(set(source.names()) | set(plan._reused))}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = AutoModelForCausalLM.from_config(source.config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise ExportError(f"verify: the reference model does not take the exported weights (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    if getattr(source.config, "tie_word_embeddings", False):
        model.tie_weights()
    if (directory / "adapter").is_dir():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, directory / "adapter")
    return model.eval()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc="vllm", leave=False)
