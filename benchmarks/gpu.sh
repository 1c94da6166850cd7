#!/usr/bin/env bash
# The GPU benchmark, one command: tokens/s of plain generation and of a harvest against batch size,
# RiskMonitor overhead (the shipped probe, and a raw-state-only probe fitted here), and a full harvest
# through the CLI, in bfloat16.
#
#     bash benchmarks/gpu.sh [MODEL]          # MODEL: smollm2-135m (default), a .gguf file, a directory, a hub id
#
# Results are printed and kept in $BENCH_OUT (default runs/gpu-bench). Needs a CUDA build of torch and
# riskprobe's dependencies; the harvest (and so the raw-only probe) needs the public TriviaQA set
# (RISKPROBE_DATASETS). Each section goes on when another fails.
set -uo pipefail
MODEL=${1:-smollm2-135m}
PY=${PY:-python3}
B=${BENCH_OUT:-runs/gpu-bench}
N=${BENCH_N:-512}
mkdir -p "$B"
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$B/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "== tokens/s against batch size (plain generate vs harvest capture; warm-up per size, alternating order)"
"$PY" benchmarks/bench_harvest.py --model "$MODEL" --device cuda --dtype bfloat16 --n "$N" --rounds 2 \
    --batch-sizes 32 128 512 2>&1 | grep -v "it/s" | tee "$B/batch.txt"
echo "== RiskMonitor overhead, shipped probe"
"$PY" benchmarks/bench_monitor.py --model "$MODEL" --device cuda --dtype bfloat16 --n "$N" --batch-size 128 \
    --rounds 8 2>&1 | grep -v "it/s" | tee "$B/monitor.txt"
echo "== harvest through the CLI (TriviaQA 1024, batch 256)"
rm -rf "$B/harvest"
"$PY" -m riskprobe harvest --model "$MODEL" --prompts triviaqa --limit 1024 --device cuda \
    --batch-size 256 --out "$B/harvest" --no-progress 2>&1 | grep -v "it/s" | tee "$B/harvest.txt"
echo "== a raw-state-only probe fitted on that harvest, and its RiskMonitor overhead"
rm -rf "$B/fit-raw" "$B/probe-raw"
"$PY" -m riskprobe fit --config configs/fit/raw_linear.yaml --data.paths "[$B/harvest]" \
    --trainer.default_root_dir "$B/fit-raw" --trainer.max_epochs 20 --n_boot 50 2>&1 | tail -4
"$PY" -m riskprobe export --ckpt "$B/fit-raw/ckpt/final.ckpt" --out "$B/probe-raw" 2>&1 | tail -1
"$PY" benchmarks/bench_monitor.py --probe "$B/probe-raw" --model "$MODEL" --device cuda --dtype bfloat16 \
    --n "$N" --batch-size 128 --rounds 8 2>&1 | grep -v "it/s" | tee "$B/monitor_raw.txt"
