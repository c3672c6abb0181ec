# `make run`: bootstrap .venv and run the DVC pipeline on the embedded tiny default.
# `make test`: bootstrap .venv and run the test suite.
# `make parity`: our code against DiffSynth-Studio's own code (its own venv, .venv-parity; see docs/parity.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-fast parity clean

install: $(STAMP)

# torch==2.13.0 is pinned here (not in pyproject.toml) and in the same pip command as
# everything else, so pip takes the CPU wheel instead of pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check torch==2.13.0 -e '.[test]' > $(VENV)/pip.log 2>&1 || (tail -40 $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import torch, diffsynth, dvc, mlflow" 
	touch $(STAMP)

run: install
	$(BIN)/dvc repro
	@$(BIN)/python -m diffsynth.cli summary

# two test workers (pytest-xdist); tests/conftest.py's scheduler keeps each module on one worker (module fixtures
# run once), in the order it sets (--no-loadscope-reorder)
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=25 -m "not slow"

# DiffSynth-Studio imports as `diffsynth` too: it lives in its own venv and runs in its own process.
PARITY_VENV := .venv-parity
PARITY_STAMP := $(PARITY_VENV)/.installed

$(PARITY_STAMP): requirements-parity.txt
	test -x $(PARITY_VENV)/bin/python || $(PYTHON) -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/pip install --disable-pip-version-check -r requirements-parity.txt > $(PARITY_VENV)/pip.log 2>&1 || (tail -40 $(PARITY_VENV)/pip.log; exit 1)
	$(PARITY_VENV)/bin/python -P -c "import diffsynth.pipelines.flux_image, diffsynth.pipelines.wan_video, diffsynth.pipelines.qwen_image"
	touch $(PARITY_STAMP)

parity: install $(PARITY_STAMP)
	$(BIN)/python tests/parity/run.py --reference-python $(PARITY_VENV)/bin/python

clean:
	rm -rf outputs reports models mlflow.db mlruns
