# The two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-scheduler test-faults test-ui test-fast bench demo up down status logs viewer clean

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
	$(BIN)/pytest -m "not scheduler and not faults and not ui"

# Scheduled runs and backfills through the real scheduler and triggerer (about 10 minutes; CI runs it).
test-scheduler: setup
	$(BIN)/pytest -m scheduler

# Jobs failing, stopped, throttled; S3 failing while committing; scheduler, triggerer and emulator
# killed: each through the real scheduler and triggerer (15-20 minutes). Prints the fault table.
test-faults: setup
	$(BIN)/pytest -m faults

# The campaign view in headless chromium against a real Airflow after a demo run (about 10 minutes).
test-ui: setup
	$(BIN)/pytest -m ui

test-fast: setup
	$(BIN)/pytest -m "not slow and not scheduler and not faults and not ui"

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

# What `make up` started and whether it runs; `make logs` follows their logs (Ctrl-C stops following).
status:
	@$(PY) -m boltzgen_demo status

logs:
	tail -n 20 -F .airflow/logs/api-server.log .airflow/logs/scheduler.log .airflow/logs/dag-processor.log \
		.airflow/logs/triggerer.log .local-stack/emulator.log

down:
	@test -x $(PY) || { echo "nothing to stop: $(VENV) does not exist"; exit 0; }; $(PY) -m boltzgen_demo down

# Fetch the 3D viewer again from the npm registry as locked in its package-lock.json (needs npm; the
# bundle is committed, so nothing else needs node).
VIEWER := plugins/boltzgen_airflow/ui
viewer:
	rm -rf $(VIEWER)/viewer/node_modules
	cd $(VIEWER)/viewer && npm ci --ignore-scripts --no-audit --no-fund
	cp $(VIEWER)/viewer/node_modules/3dmol/build/3Dmol-min.js $(VIEWER)/viewer/node_modules/3dmol/build/3Dmol-min.js.LICENSE.txt $(VIEWER)/static/vendor/
	cp $(VIEWER)/viewer/node_modules/3dmol/LICENSE $(VIEWER)/static/vendor/3Dmol-LICENSE.txt
	rm -rf $(VIEWER)/viewer/node_modules

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
