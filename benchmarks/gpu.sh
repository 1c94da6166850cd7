#!/usr/bin/env bash
# The GPU benchmark, one command: tokens/s of plain generation and of a harvest against batch size,
# RiskMonitor overhead over interleaved rounds, and a full harvest through the CLI, in bfloat16.
#
#     bash benchmarks/gpu.sh [MODEL]          # MODEL: smollm2-135m (default), a .gguf file, a directory, a hub id
#
# Results are printed and kept in $BENCH_OUT (default runs/gpu-bench). Needs a CUDA build of torch and
# riskprobe's own dependencies; the harvest needs the public TriviaQA set (RISKPROBE_DATASETS).
set -uo pipefail
MODEL=${1:-smollm2-135m}
PY=${PY:-python3}
B=${BENCH_OUT:-runs/gpu-bench}
mkdir -p "$B"
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$B/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== tokens/s against batch size (plain generate vs harvest capture)"
"$PY" benchmarks/bench_harvest.py --model "$MODEL" --device cuda --dtype bfloat16 --n 512 --rounds 2 \
    --batch-sizes 32 128 512 2>&1 | tee "$B/batch.txt"
echo "== RiskMonitor overhead (shipped probe)"
"$PY" benchmarks/bench_monitor.py --model "$MODEL" --device cuda --dtype bfloat16 --n 512 --batch-size 128 \
    --rounds 8 ${MONITOR_ARGS:-} 2>&1 | tee "$B/monitor.txt"
echo "== harvest through the CLI (TriviaQA 1024, batch 256)"
rm -rf "$B/harvest"
"$PY" -m riskprobe harvest --model "$MODEL" --prompts triviaqa --limit 1024 --device cuda \
    --batch-size 256 --out "$B/harvest" --no-progress 2>&1 | tee "$B/harvest.txt"
