# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint format bench services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP) $@

## run: create .venv, install, start the embedded default on :8000
run: $(STAMP)
	$(BIN)/eventrouter serve $(if $(CONFIG),--config $(CONFIG))

## test: install test dependencies, make sure services are up, lint, run the suite
test: $(TEST_STAMP) services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
BENCH ?= all
bench: $(TEST_STAMP)
	bash .ci/services bench
	$(BIN)/python bench/$(BENCH).py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
