# Two commands for a new user: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Quiet, offline-friendly Prefect defaults (the ephemeral server needs time on 2 slow cores). The terminal is
# quieted through the console handler only: PREFECT_LOGGING_LEVEL=WARNING would also keep the runs' INFO lines
# (stage starts, resumes, skipped FID, the manager's decisions) out of the UI's Logs tab.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL ?= WARNING
export DO_NOT_TRACK ?= 1

.PHONY: demo test lint test-slow bench install clean serve

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Curate the embedded demo data, then train a small StyleGAN2 on it for a few minutes on CPU. A rerun continues
# the same run; after an update changed the demo data or settings, the old run is set aside (runs/demo/superseded/).
DEMO_TRAIN := --arch stylegan2 --resolution 64 --kimg 0.2 --snapshot-kimg 0.1 --batch 8 \
              --channel-base 4096 --channel-max 128 --restart-on-change

demo: $(STAMP)
	$(BIN)/ganflow curate --demo --out data/curated/demo
	$(BIN)/ganflow train --data data/curated/demo --run-dir runs/demo $(DEMO_TRAIN)
	@test -n "$$GANFLOW_INCEPTION_WEIGHTS" || echo "FID below uses a RANDOM-INITIALIZED Inception (no weights file given): not comparable to published FIDs; set GANFLOW_INCEPTION_WEIGHTS for real ones"
	$(BIN)/ganflow evaluate --run-dir runs/demo --data data/curated/demo --n-fake 32 \
	  --inception-weights $${GANFLOW_INCEPTION_WEIGHTS:-random} > runs/demo/evaluate.json
	$(BIN)/ganflow generate --snapshot runs/demo/best.pt --seeds 0-15 --out runs/demo/seeds
	$(BIN)/ganflow morph --snapshot runs/demo/best.pt --seeds 1,5,9 --frames 30 --out runs/demo/morph.gif

# tests/test_serve_browser.py drives Debian's Chromium (never a browser download): installed here when missing,
# as root or through sudo; without it that test is skipped (and fails under CI).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "$(CHROMIUM) is missing and installing it needs root: the browser test will be skipped"; exit 0; fi; \
	{ $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends chromium >/dev/null; } || echo "could not install chromium: the browser test will be skipped"

# Lint and type-check first (seconds): ruff's bug-finding rules and mypy, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) lint $(CHROMIUM)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# bench/curation_scale.py curates 2k, 10k and 50k generated images twice each (hours on 2 cores):
# `make bench SCALE_ARGS="--sizes 2000,10000"` for less.
SCALE_ARGS ?=

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/curation.py
	$(BIN)/python bench/matte_agreement.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/train_step.py --arch stylegan3-t stylegan3-r --resolutions 64 --batch 4 --steps 2 \
		--out bench/results/train_step_stylegan3.json
	$(BIN)/python bench/checkpoint_overhead.py
	$(BIN)/python bench/fid.py
	$(BIN)/python bench/dvc_noop.py
	$(BIN)/python bench/serve_load.py
	nice -n 19 $(BIN)/python bench/curation_scale.py $(SCALE_ARGS)

# A local Prefect server (UI at http://127.0.0.1:4200), the ganflow-process pool, the deployments of
# deployments/prefect.yaml and a worker for the pool; Ctrl-C or SIGTERM stops them all. See README, "Prefect".
serve: $(STAMP)
	GANFLOW_ROOT=$(CURDIR) deployments/serve.sh

clean:
	rm -rf data/curated data/cache data/raw bench/results
