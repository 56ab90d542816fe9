"""GGUF export backend: tensor quantizers and llama.cpp-style type mixes (`quants`), architecture mapping (`arch`),
tensor sources (`source`) and the file writer (`writer`).

Kept free of heavy imports so that `import slipstream.backends.gguf` stays cheap; import the submodules directly.
"""

# Every `quant` name the exporter accepts (mirrors quants.MIXES + quants.PLAIN; checked by tests/backends/gguf).
QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m",
          "q5_k", "q4_k", "q3_k", "q2_k", "q5_1", "q5_0", "q4_1", "q4_0")
