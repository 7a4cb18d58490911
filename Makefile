# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --config-settings editable_mode=compat
# Re-install only when the project's dependencies change; `make run` needs
# the runtime packages only, `make test` the test tools too.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# checkov pins older boto3, botocore, packaging and networkx than the tests use,
# so it gets a venv of its own (tests/deploy/test_cloudformation.py looks there).
TOOLS := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed
# xds-protos ships an older copy of opentelemetry/proto that overwrites
# opentelemetry-proto's files when pip installs it second; reinstalling
# opentelemetry-proto puts back the version the OTLP exporter imports.
REINSTALL_OTEL_PROTO := $(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
	"opentelemetry-proto==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"
CHECKOV_VERSION := 3.3.30
# Spectral lints the OpenAPI documents in the tests (tests/e2e/test_openapi_documents.py).
SPECTRAL_VERSION := 6.16.3

.PHONY: run test lint format install install-dev proto bench clean

run: install ## install, start every part, print the URLs; Ctrl-C stops all
	$(BIN)/python -m stack

test: lint ## install, lint, and run every test (PostgreSQL too when PMS_TEST_POSTGRES_URL is set)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev ## ruff (lint and format check) over the tree, mypy over the kit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

install: $(RUN_STAMP)
install-dev: $(DEV_STAMP) $(TOOLS_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) --editable .
	$(REINSTALL_OTEL_PROTO)
	@touch $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) --editable '.[dev]'
	$(REINSTALL_OTEL_PROTO)
	@touch $@ $(RUN_STAMP)

$(TOOLS_STAMP): Makefile | $(VENV)/bin/python
	$(PYTHON) -m venv $(TOOLS) || python3 -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	npm install --prefix $(TOOLS)/node --no-audit --no-fund --silent '@stoplight/spectral-cli@$(SPECTRAL_VERSION)'
	@touch $@

proto: install-dev ## regenerate pms_common/protos from proto/*.proto
	$(BIN)/python -m pms_common.protos.codegen

bench: install-dev ## measure the system (see bench/README.md); needs wrk
	@command -v wrk >/dev/null || { echo "make bench needs wrk, the HTTP load generator: install it (apt-get install wrk) and run make bench again" >&2; exit 1; }
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: ## remove the virtualenv, local data and run files
	rm -rf $(VENV) data .run
