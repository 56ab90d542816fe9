#!/usr/bin/env bash
# Everything a lent-GPU session runs, in one call: kernel checks vs float64, tile-config sweeps, kernel and
# attention benchmarks, every tiny family end to end. Each step has its own time limit; logs go to $OUT (the
# device tool's folder) or ./gpu-logs. Runs from the repository root with the machine's own torch/triton/
# transformers (no install). `gpu_session.sh STEP...` runs only the named steps (in this file's order: the
# measurements the open issues wait for first, the kernel checks after them).
# The GPU machine lacks qwen-tts (the `tts` step) and bitsandbytes (lora_linear's baseline) and has no network:
# run `bash benchmarks/gpu_extra.sh` here first and pass carry=["gpu-extra"] (20 MB; git-ignored).
set -u
wanted="$*"
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONPATH=$PWD:$PWD/gpu-extra PYTHONUNBUFFERED=1
unset TRITON_INTERPRET SLIPSTREAM_TRITON_ON_CPU

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, print its exit code
    local name=$1 limit=$2
    shift 2
    if [ -n "$wanted" ] && [[ " $wanted " != *" $name "* ]]; then return; fi
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name exit ${PIPESTATUS[0]}"
}

{ date -u; git rev-parse --short HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__)"; } 2>&1 | tee "$out/machine.txt"
# host time of a Triton launch and of each decode op vs eager: where issue 4's and 7's host-bound time goes
step launch_overhead 90 python3 benchmarks/launch_overhead.py
step attention_tune 150 python3 benchmarks/attention_tune.py
step attention_tune_short 120 python3 benchmarks/attention_tune.py --seq 1024 --save "$out/tiles.json"
step rms_norm_tune 60 python3 benchmarks/rms_norm_tune.py
step kernels 60 python3 benchmarks/kernels.py --reps 30
step attention 80 python3 benchmarks/attention.py
step attention_tiles 90 python3 benchmarks/attention.py --tiles "$out/tiles.json"
step lora_linear_tune 150 python3 benchmarks/lora_linear_tune.py
step lora_linear 60 python3 benchmarks/lora_linear.py
step lora_linear_overhead 60 python3 benchmarks/lora_linear_overhead.py
step models 200 python3 tests/backends/device_model_check.py --device cuda
# qwen-tts 0.1.1 needs transformers 4.57.3 (the machine has 5.x): gpu-extra/tts-wheels, installed privately.
tts_site="python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tts-site gpu-extra/tts-wheels/*.whl \
&& PYTHONPATH=/tmp/tts-site:\$PYTHONPATH"
# one decode call of a talker / code-predictor layer: eager, slipstream, its graph, and both as CUDA-graph replays
step decode_layer_calls 120 bash -c "$tts_site python3 benchmarks/decode_layer_calls.py --shape 1.7b --device cuda"
# 100 frames take ~20 s a row on an H100 (host-bound), so 2 repeats of 3 rows plus warm-up fit the limit.
step tts 240 bash -c "$tts_site python3 benchmarks/tts_generate.py --shape 1.7b --device cuda --repeats 2 \
--profile 30 \${TTS_ARGS:-}"
step device_check 150 python3 tests/kernels/device_check.py --device cuda
step train_step 120 bash -c "python3 benchmarks/train_step.py --device cuda --hidden 1024 --layers 8 --seq 512 \
--repeats 20 && python3 benchmarks/train_step.py --device cuda --hidden 1024 --layers 8 --seq 512 --repeats 20 --lora"
