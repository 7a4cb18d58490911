# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --config-settings editable_mode=compat
# Re-install only when the project's dependencies change; `make run` needs
# the runtime packages only, `make test` the test tools too.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test install install-dev proto bench clean

run: install ## install, start every part, print the URLs; Ctrl-C stops all
	$(BIN)/python -m stack

test: install-dev ## install and run every test (PostgreSQL too when PMS_TEST_POSTGRES_URL is set)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(RUN_STAMP)
install-dev: $(DEV_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) --editable .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) --editable '.[dev]'
	@touch $@ $(RUN_STAMP)

proto: install-dev ## regenerate pms_common/protos from proto/*.proto
	$(BIN)/python -m pms_common.protos.codegen

bench: install-dev ## measure the system (see bench/README.md); needs wrk
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: ## remove the virtualenv, local data and run files
	rm -rf $(VENV) data .run
