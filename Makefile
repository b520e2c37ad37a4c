# The two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-scheduler test-faults test-fast bench demo up down clean
.PHONY: test-scheduler-celery test-faults-celery test-faults-celery-only

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
	$(BIN)/pytest -m "not scheduler and not faults"

# Scheduled runs and backfills through the real scheduler and triggerer (about 10 minutes; CI runs it).
test-scheduler: setup
	$(BIN)/pytest -m scheduler

# Jobs failing, stopped, throttled; S3 failing while committing; scheduler, triggerer and emulator
# killed: each through the real scheduler and triggerer (15-20 minutes). Prints the fault table.
test-faults: setup
	$(BIN)/pytest -m faults

# The same suites on the Celery deployment: PostgreSQL, Redis (Debian's packages, installed when
# missing) and the CeleryExecutor with two workers. Its fault suite adds a worker SIGKILLed while it
# runs stage tasks and PostgreSQL crashing mid-run; test-faults-celery-only runs just those two.
test-scheduler-celery: setup
	$(BIN)/pytest -m scheduler --engine celery

test-faults-celery: setup
	$(BIN)/pytest -m faults --engine celery

test-faults-celery-only: setup
	$(BIN)/pytest -m "faults and celery" --engine celery

test-fast: setup
	$(BIN)/pytest -m "not slow and not scheduler and not faults"

# BENCH_ARGS=--orchestration adds the Airflow + emulator run (minutes); see docs/benchmarks.md.
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The demo campaign end to end on a local stack of its own; results in demo-output/. DEMO_ARGS=--fresh
# forgets the bucket kept from the previous run, so every stage runs again.
demo: setup
	$(PY) -m boltzgen_demo demo $(DEMO_ARGS)

# The local stack and a local Airflow (UI, scheduler, DAG processor, triggerer) in the background.
# UP_ARGS="--engine celery" runs PostgreSQL, Redis and two Celery workers instead of SQLite and the
# LocalExecutor (data in .local-stack/celery); `make down` stops either.
up: setup
	$(PY) -m boltzgen_demo up $(UP_ARGS)

down:
	@test -x $(PY) || { echo "nothing to stop: $(VENV) does not exist"; exit 0; }; $(PY) -m boltzgen_demo down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
