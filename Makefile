# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Every install comes from the hash-checked locks in requirements/ (`make lock` makes
# them from setup.cfg), so each machine and image gets the set that CI tested.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCKS  := requirements
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# pip, setuptools and wheel from build.txt; then one lock; then eventrouter itself with
# no dependency resolution of its own (the lock holds them all) and the locked setuptools.
PIP_LOCKED := $(BIN)/python -m pip install --quiet --require-hashes
PIP_SELF   := $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
# The team's check that a plain `pip install .` brings every module the package imports;
# it lives beside the repository, so a clone without it skips this step (the smoke stage
# imports every module from a runtime-only venv either way).
RUNTIME_DEPS ?= ../shared/tools/runtime-deps

.PHONY: run test test-fast smoke lock lock-check lint format bench bench-targets services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python $(LOCKS)/build.txt $(LOCKS)/runtime.txt setup.cfg setup.py pyproject.toml router_core/_scan.c sinks/_native.c
	$(PIP_LOCKED) -r $(LOCKS)/build.txt
	$(PIP_LOCKED) -r $(LOCKS)/runtime.txt
	$(PIP_SELF)
	touch $@

$(TEST_STAMP): $(BIN)/python $(LOCKS)/build.txt $(LOCKS)/test.txt setup.cfg setup.py pyproject.toml router_core/_scan.c sinks/_native.c
	$(PIP_LOCKED) -r $(LOCKS)/build.txt
	$(PIP_LOCKED) -r $(LOCKS)/test.txt
	$(PIP_SELF)
	touch $(STAMP) $@

## run: create .venv, install the runtime lock, start the embedded default on :8000
run: $(STAMP)
	$(BIN)/eventrouter serve $(if $(CONFIG),--config $(CONFIG))

## test: install the test lock, make sure services are up, check the lock and the
## runtime imports, lint, prove the newcomer path (smoke), run the whole suite: every
## folder of tests/ (unit, integration, browser, faults; tests/README.md)
test: $(TEST_STAMP) services lock-check
	@if [ -f "$(RUNTIME_DEPS)" ]; then \
		echo "runtime-deps: $(RUNTIME_DEPS)"; \
		$(BIN)/python "$(RUNTIME_DEPS)" || exit 1; \
	else echo "runtime-deps: $(RUNTIME_DEPS) not here; the smoke stage imports every module instead"; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTHON) .ci/smoke.py
	$(BIN)/python -m pytest --durations=30 $(PYTEST_ARGS)

## test-fast: the edit loop: tests/unit only, with nothing else running (no services,
## server processes or browsers, none started), spread over every CPU (pytest-xdist;
## PYTEST_ARGS="-n 0" for one process, e.g. to use --pdb); no lint, no smoke stage
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest tests/unit -n auto -q $(PYTEST_ARGS)

## smoke: a fresh venv holding only the runtime lock, eventrouter installed from its
## wheel outside the repository, started and asked what the README shows (.ci/smoke.py)
smoke:
	$(PYTHON) .ci/smoke.py

## lock: compile requirements/*.txt from setup.cfg (kept pins stay; LOCK_ARGS=--upgrade)
lock: $(TEST_STAMP)
	UV=$(BIN)/uv bash .ci/lock $(LOCK_ARGS)

## lock-check: fail when setup.cfg and requirements/ disagree
lock-check: $(TEST_STAMP)
	UV=$(BIN)/uv bash .ci/lock --check

## services: start the local services the tests and benchmarks need, if they are down
services:
	bash .ci/services

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: every figure in one table: ingest (embedded, RabbitMQ) beside bare Falcon,
## sink writes, the worker drain, dashboard queries (bench/README.md, "One command").
## One area's own script: make bench BENCH=ingest|sinks|e2e|dashboard BENCH_ARGS="..."
## Before and after: make bench BASE=<git ref> runs bench/all.py of that ref and of this
## tree in turn, BENCH_ARGS to both, one table (bench/compare.py; bench/README.md).
## Issue 20's targets: make bench BENCH=targets, or make bench-targets (below).
BENCH ?= all
bench: $(TEST_STAMP)
	bash .ci/services bench
	$(BIN)/python bench/$(if $(filter targets,$(BENCH)),targets.py $(if $(BASE),--base $(BASE)),$(if $(BASE),compare.py --base $(BASE),$(BENCH).py)) $(BENCH_ARGS)

## bench-targets: every target of issue 20 with its figure and a "met" column, one run:
## ingest beside bare Falcon and the prototype, the /v1/batch A/B against BASE (default:
## bench/targets.py's, main before issue 20), sinks, 3 minutes end to end; ~12 minutes.
## BENCH_ARGS="--quick" for a smoke run (bench/targets.py; bench/README.md, "Targets
## (issue 20)").
bench-targets:
	$(MAKE) bench BENCH=targets

clean:
	rm -rf $(VENV) *.egg-info build .pytest_cache .ruff_cache
