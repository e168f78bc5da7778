# leadflow: two commands on a fresh machine.
#   make demo   -- create the virtualenv, install, run the demo on the embedded SQLite store
#   make test   -- create the virtualenv, install, run the whole suite (starts its own services)
# The distribution's Python when it is 3.11+ (built with PGO and LTO: less CPU per record
# than a default pyenv build), else python3 on PATH; see scripts/pick-python.
PYTHON ?= $(shell scripts/pick-python)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system-deps demo test unit lint typecheck schemas rules-snapshot services-up services-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/leadflow demo

# Headless Chromium renders the HTML report in its test; PostgreSQL, Java and Maven are
# installed by scripts/services when the integration fixtures start the services.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium (the report test needs it)"; fi; }

test: setup system-deps
	$(BIN)/python -m pytest

unit: setup
	$(BIN)/python -m pytest tests/unit tests/integration/test_engine.py

# mypy cannot follow pyproject's package-dir: build/typecheck/leadflow/ links consumers/ and
# projections/ where it looks for leadflow.consumers and leadflow.projections.
lint: setup
	mkdir -p build/typecheck/leadflow
	ln -sfn ../../../consumers build/typecheck/leadflow/consumers
	ln -sfn ../../../projections build/typecheck/leadflow/projections
	$(BIN)/ruff check src tests consumers projections
	$(BIN)/mypy

# The JSON snapshot of the built-in rules (read instead of parsing the TOML; see rules.py).
rules-snapshot: setup
	$(BIN)/python -c "from pathlib import Path; from leadflow.domain import rules; \
	  Path(rules.__file__).with_name(rules.SNAPSHOT).write_text(rules.default_rules_snapshot(rules.default_rules_text()))"

schemas: setup
	$(BIN)/leadflow schemas export schemas

services-up:
	scripts/services up

services-down:
	scripts/services down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache leadflow.db

# Benchmarks (not part of `make test`): starts the tests' Kafka and PostgreSQL, prints a table
# and writes bench/results/latest.json. `make bench BENCH_ARGS=--quick` for a ~30k-record run.
.PHONY: bench  # bench/ is a directory: without this make could think the target is done
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)
