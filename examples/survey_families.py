"""Architecture survey: slipstream on tiny random models of transformers families its code never names.

    python examples/survey_families.py [FAMILY ...]      # default: every family below this transformers has

For each family: optimize with the default pipeline, then compare the forward logits and an 8-token greedy
generate() with the unoptimized model (the same weights), and print what each pass fused (counted after
generation, so prefill and decode graphs both count) and what it refused, with the reason. Nothing here is
family-specific: the configs only make the models tiny. Results for transformers 4.57.3: docs/families.md.
"""
from __future__ import annotations

import argparse
import copy
import warnings

import torch
import transformers

import slipstream
from slipstream.debug.tolerance import max_rel_error

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MOE = dict(num_experts_per_tok=2)
# family -> (config class, what makes it tiny or well-formed beyond TINY)
FAMILIES = {
    "apertus": ("ApertusConfig", {}),
    "arcee": ("ArceeConfig", {}),
    "cohere": ("CohereConfig", {}),
    "cohere2": ("Cohere2Config", {"sliding_window": 8}),
    "ernie4_5": ("Ernie4_5Config", {"head_dim": 16}),
    "exaone4": ("Exaone4Config", {"sliding_window": 8, "head_dim": 16}),
    "falcon": ("FalconConfig", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "glm": ("GlmConfig", {"head_dim": 16}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4}),
    "gpt_neox": ("GPTNeoXConfig", {"rotary_pct": 0.25}),
    "granitemoe": ("GraniteMoeConfig", {"num_local_experts": 4, **MOE}),
    "helium": ("HeliumConfig", {"head_dim": 16}),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", {"head_dim": 16}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, **MOE}),
    "nemotron": ("NemotronConfig", {}),
    "olmo": ("OlmoConfig", {}),
    "olmo3": ("Olmo3Config", {"sliding_window": 8}),
    "opt": ("OPTConfig", {"ffn_dim": 128, "word_embed_proj_dim": 64}),
    "persimmon": ("PersimmonConfig", {}),
    "phi": ("PhiConfig", {}),
    "qwen2_moe": ("Qwen2MoeConfig", {"num_experts": 4, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 64, **MOE}),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_experts": 4, "moe_intermediate_size": 32, "head_dim": 16, **MOE}),
    "seed_oss": ("SeedOssConfig", {"head_dim": 16}),
    "smollm3": ("SmolLM3Config", {}),
    "stablelm": ("StableLmConfig", {}),
    "starcoder2": ("Starcoder2Config", {}),
}


def survey(name: str) -> str:
    class_name, extra = FAMILIES[name]
    config_class = getattr(transformers, class_name, None)
    if config_class is None:
        return f"{name}: not in transformers {transformers.__version__}"
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config_class(**TINY, **extra)).eval()
    model = slipstream.optimize(copy.deepcopy(reference))
    ids = torch.randint(3, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    greedy = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        error = max_rel_error(model(ids).logits, reference(ids).logits)
        same = torch.equal(model.generate(ids, **greedy), reference.generate(ids, **greedy))
    report = slipstream.report(model)
    fused = ", ".join(f"{p} {report.fused(p)}" for p in report.pass_names if report.fused(p)) or "nothing"
    lines = [f"{name}: logits max rel error {error:.1e}, greedy generate {'identical' if same else 'DIFFERS'}; "
             f"fused: {fused}"]
    reasons = sorted({(p, reason) for p in report.pass_names for _, _, reason in report.refusals(p)})
    lines += [f"    refused by {p}: {reason}" for p, reason in reasons]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help=f"any of: {', '.join(FAMILIES)}")
    args = parser.parse_args()
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="torch._dynamo")
    for name in args.families or FAMILIES:
        print(survey(name), flush=True)


if __name__ == "__main__":
    main()
