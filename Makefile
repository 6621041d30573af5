# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Quiet, offline-friendly Prefect defaults (the ephemeral server needs time on 2 slow cores).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
export DO_NOT_TRACK ?= 1

.PHONY: demo test test-slow bench install clean serve

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Curate the embedded demo data, then train a small StyleGAN2 on it for a few minutes on CPU.
DEMO_TRAIN := --arch stylegan2 --resolution 64 --kimg 0.2 --snapshot-kimg 0.1 --batch 8 \
              --channel-base 4096 --channel-max 128

demo: $(STAMP)
	$(BIN)/ganflow curate --demo --out data/curated/demo
	$(BIN)/ganflow train --data data/curated/demo --run-dir runs/demo $(DEMO_TRAIN)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/curation.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/checkpoint_overhead.py

# A local Prefect server (UI at http://127.0.0.1:4200), the ganflow-process pool, the deployments of
# deployments/prefect.yaml and a worker for the pool; Ctrl-C stops them. See README, "Prefect".
serve: $(STAMP)
	GANFLOW_ROOT=$(CURDIR) deployments/serve.sh

clean:
	rm -rf data/curated data/cache data/raw bench/results
