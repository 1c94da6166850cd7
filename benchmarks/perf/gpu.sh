#!/usr/bin/env bash
# The GPU benchmark, one command: tokens/s of plain generation and of a harvest against batch size,
# teacher-forced extraction against the capture loop (and re-extraction of the SmolLM2 corpus), RiskMonitor
# overhead (the shipped probe, and a raw-state-only probe: $PROBE_RAW, else one fitted on the harvest here),
# and a full harvest through the CLI, in bfloat16.
#
#     bash benchmarks/perf/gpu.sh [MODEL]          # MODEL: smollm2-135m (default), a .gguf file, a directory, a hub id
#     SECTIONS="extract monitor raw" PROBE_RAW=path/to/probe bash benchmarks/perf/gpu.sh MODEL   # some sections only
#
# Sections: settings, batch, extract, monitor, harvest, raw (all by default). Results are printed and kept in
# $BENCH_OUT (default runs/gpu-bench). Needs a CUDA build of torch and riskprobe's dependencies; the public
# TriviaQA set (RISKPROBE_DATASETS). Each section goes on when another fails.
set -uo pipefail
MODEL=${1:-smollm2-135m}
PY=${PY:-python3}
B=${BENCH_OUT:-runs/gpu-bench}
N=${BENCH_N:-512}
SECTIONS=" ${SECTIONS:-settings batch extract monitor harvest raw} "
PROBE_RAW=${PROBE_RAW:-}
CORPUS=${CORPUS-data/corpora/smollm2-135m}   # re-extracted in the extract section; empty: skip (needs all its sets)
on() { [[ "$SECTIONS" == *" $1 "* ]]; }
mkdir -p "$B"
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$B/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
if on settings; then
    echo "== a shared prompt prefix computed once + prompts bucketed by length + ended rows leaving the batch, against none of them (same batch, plain and harvest)"
    "$PY" benchmarks/perf/bench_harvest.py --model "$MODEL" --device cuda --dtype bfloat16 --n "$N" --rounds 2 --settings \
        --old-batch 128 --batch-size 128 --warmup-rounds 1 2>&1 | grep -v "it/s" | tee "$B/settings.txt"
fi
if on batch; then
    echo "== tokens/s against batch size (plain generate vs harvest capture; warm-up per size, alternating order)"
    "$PY" benchmarks/perf/bench_harvest.py --model "$MODEL" --device cuda --dtype bfloat16 --n "$N" --rounds 2 \
        --batch-sizes 32 128 512 2>&1 | grep -v "it/s" | tee "$B/batch.txt"
fi
if on extract; then
    echo "== teacher-forced extraction vs the capture loop, and re-extraction of 3,000 corpus rows"
    "$PY" benchmarks/perf/bench_extract.py --model "$MODEL" --device cuda --dtype bfloat16 --n "$N" --batch-size 128 \
        --rounds 3 --prompts builtin-factual+arithmetic+triviaqa ${CORPUS:+--corpus "$CORPUS" --corpus-rows 3000} 2>&1 | grep -v "it/s" | tee "$B/extract.txt"
fi
if on monitor; then
    echo "== RiskMonitor overhead, shipped probe"
    "$PY" benchmarks/perf/bench_monitor.py --model "$MODEL" --device cuda --dtype bfloat16 --n "$N" --batch-size 128 \
        --rounds 10 2>&1 | grep -v "it/s" | tee "$B/monitor.txt"
fi
if on harvest || { on raw && [ -z "$PROBE_RAW" ]; }; then
    echo "== harvest through the CLI (TriviaQA 1024, batch 256)"
    rm -rf "$B/harvest"
    "$PY" -m riskprobe harvest --model "$MODEL" --prompts triviaqa --limit 1024 --device cuda \
        --batch-size 256 --out "$B/harvest" --no-progress 2>&1 | grep -v "it/s" | tee "$B/harvest.txt"
fi
if on raw; then
    echo "== a raw-state-only probe and its RiskMonitor overhead"
    if [ -z "$PROBE_RAW" ]; then
        rm -rf "$B/fit-raw" "$B/probe-raw"
        "$PY" -m riskprobe fit --config raw_linear --data.paths "[$B/harvest]" \
            --trainer.default_root_dir "$B/fit-raw" --trainer.max_epochs 20 --n_boot 50 2>&1 | tail -4
        "$PY" -m riskprobe export --ckpt "$B/fit-raw/ckpt/final.ckpt" --out "$B/probe-raw" 2>&1 | tail -1
        PROBE_RAW="$B/probe-raw"
    fi
    "$PY" benchmarks/perf/bench_monitor.py --probe "$PROBE_RAW" --model "$MODEL" --device cuda --dtype bfloat16 \
        --n "$N" --batch-size 128 --rounds 10 2>&1 | grep -v "it/s" | tee "$B/monitor_raw.txt"
fi
