# The two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-scheduler test-faults test-ui test-fast test-boltzgen boltzgen-venv mwaa-venv test-mwaa bench demo up down status logs viewer clean
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
	$(BIN)/pytest -m "not scheduler and not faults and not ui and not boltzgen"

# Scheduled runs and backfills through the real scheduler and triggerer, and the orchestration
# benchmark's smoke run (about 15 minutes; CI runs them on the Celery deployment).
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

# The campaign view in headless chromium against a real Airflow after a demo run (about 10 minutes).
test-ui: setup
	$(BIN)/pytest -m ui

test-fast: setup
	$(BIN)/pytest -m "not slow and not scheduler and not faults and not ui and not boltzgen"

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

# The simulator and the CPU stages checked against the real BoltzGen 0.3.2 (CPU only), real analysis
# included (about half a minute of CPU per design): 14 CPU-minutes with the venv cached (10-12 minutes
# on an idle 2-core machine), plus 2-3 minutes to build it.
test-boltzgen: setup $(BOLTZGEN_STAMP)
	BOLTZGEN_VENV=$(abspath $(BOLTZGEN_VENV)) $(BIN)/pytest -m boltzgen tests/boltzgen_real

# The versions Amazon MWAA runs: Airflow 3.3.1 and provider 9.34.0 with the pins of Airflow's
# constraints-3.3.1 (constraints-mwaa.txt), on Python 3.12 (3.11 with a note where there is none), in
# a venv of its own kept between runs. Runs the operator, trigger, DAG parsing and end-to-end tests.
MWAA_VENV ?= .venv-mwaa
# The first Python 3.12 that runs (a pyenv shim may exist without the version selected), else 3.11.
MWAA_PYTHON ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
	$$p -c '' 2>/dev/null && { command -v $$p; exit; }; done; command -v python3.11)
MWAA_STAMP := $(MWAA_VENV)/.installed
# Of the end-to-end runs, those whose path through the provider differs: no job, a failed plan, and
# InstancePreferences in the request (refused by MWAA's botocore). The others repeat paths that
# tests/stage_trigger covers on these versions (a failed job, a cleared task) and run in `make test`.
MWAA_E2E := test_dry_run_plans_and_starts_no_job test_a_failed_plan_ends_the_run_at_once_with_every_bad_param \
	test_fallback_instance_types_reach_sagemaker_as_instance_preferences
MWAA_TESTS := tests/stage_trigger tests/local_stack/test_airflow_provider.py tests/dags/test_dag_parsing.py \
	$(addprefix tests/dags/test_e2e.py::,$(MWAA_E2E))

$(MWAA_STAMP): requirements-mwaa.txt constraints-mwaa.txt requirements-dev.txt pyproject.toml
	@$(MWAA_PYTHON) -c 'import sys; sys.version_info[:2] == (3, 12) or print(f"NOTE: MWAA runs Python 3.12, which this machine lacks: testing on {sys.version.split()[0]}")'
	@test -x $(MWAA_VENV)/bin/python || $(MWAA_PYTHON) -m venv $(MWAA_VENV)
	@$(MWAA_VENV)/bin/python -m pip install -q --upgrade pip uv
	@# The constraints URL is what MWAA reads; constraints-mwaa.txt holds its pins that apply here.
	@# From requirements-dev.txt: the test tools, and numpy, pandas and biopython for the simulator's jobs.
	$(MWAA_VENV)/bin/uv pip install --python $(MWAA_VENV)/bin/python -q --compile-bytecode \
		-c constraints-mwaa.txt apache-airflow -r <(grep -v '^--constraint' requirements-mwaa.txt) \
		$$(grep -E '^(moto|pytest|numpy|pandas|biopython)' requirements-dev.txt)
	$(MWAA_VENV)/bin/uv pip install --python $(MWAA_VENV)/bin/python -q --no-deps -e .
	@$(MWAA_VENV)/bin/python -m compileall -q -j 0 plugins local include dags >/dev/null
	@touch $(MWAA_STAMP)

mwaa-venv: $(MWAA_STAMP)

test-mwaa: $(MWAA_STAMP)
	$(MWAA_VENV)/bin/python -c 'import sys; from importlib.metadata import version as v; print("MWAA tier: Python", sys.version.split()[0], "| apache-airflow", v("apache-airflow"), "| amazon provider", v("apache-airflow-providers-amazon"))'
	$(MWAA_VENV)/bin/pytest $(MWAA_TESTS)

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
	rm -rf $(VENV) $(MWAA_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
