# The two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-scheduler test-faults test-fast test-boltzgen boltzgen-venv bench demo up down clean

setup: $(STAMP)

# Modules are compiled once here: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise
# compile Airflow again in every process (about 4 CPU seconds each: every task, every CLI call).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Python 3.11 or newer is needed, found {sys.version.split()[0]}"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(PY) -q --compile-bytecode -r requirements-dev.txt -e .
	@$(PY) -m compileall -q -j 0 plugins local include dags >/dev/null
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -m "not scheduler and not faults and not boltzgen"

# Scheduled runs and backfills through the real scheduler and triggerer (about 10 minutes; CI runs it).
test-scheduler: setup
	$(BIN)/pytest -m scheduler

# Jobs failing, stopped, throttled; S3 failing while committing; scheduler, triggerer and emulator
# killed: each through the real scheduler and triggerer (15-20 minutes). Prints the fault table.
test-faults: setup
	$(BIN)/pytest -m faults

test-fast: setup
	$(BIN)/pytest -m "not slow and not scheduler and not faults and not boltzgen"

# The real BoltzGen 0.3.2 in a venv of its own (cached in .boltzgen/, ignored by git): torch's CPU
# build first, so that boltzgen does not pull a CUDA torch. BOLTZGEN_VENV=path uses another one.
BOLTZGEN_VENV ?= .boltzgen/venv
BOLTZGEN_STAMP := $(BOLTZGEN_VENV)/.installed-boltzgen-0.3.2

boltzgen-venv: $(BOLTZGEN_STAMP)

$(BOLTZGEN_STAMP):
	@test -x $(BOLTZGEN_VENV)/bin/python || $(PYTHON) -m venv $(BOLTZGEN_VENV)
	$(BOLTZGEN_VENV)/bin/pip install -q torch==2.13.0
	$(BOLTZGEN_VENV)/bin/pip install -q boltzgen==0.3.2
	@$(BOLTZGEN_VENV)/bin/python -c 'import torch; assert torch.version.cuda is None, f"a CUDA torch was installed: {torch.__version__}"'
	@touch $(BOLTZGEN_STAMP)

# The simulator and the CPU stages checked against the real BoltzGen 0.3.2 (CPU only, a few minutes).
test-boltzgen: setup $(BOLTZGEN_STAMP)
	BOLTZGEN_VENV=$(abspath $(BOLTZGEN_VENV)) $(BIN)/pytest -m boltzgen tests/boltzgen_real

# BENCH_ARGS=--orchestration adds the Airflow + emulator run (minutes); see docs/benchmarks.md.
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The demo campaign end to end on a local stack of its own; results in demo-output/. DEMO_ARGS=--fresh
# forgets the bucket kept from the previous run, so every stage runs again.
demo: setup
	$(PY) -m boltzgen_demo demo $(DEMO_ARGS)

# The local stack and a local Airflow (UI, scheduler, DAG processor, triggerer) in the background.
up: setup
	$(PY) -m boltzgen_demo up $(UP_ARGS)

down:
	@test -x $(PY) || { echo "nothing to stop: $(VENV) does not exist"; exit 0; }; $(PY) -m boltzgen_demo down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
