# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the project's dependencies change.
STAMP := $(VENV)/.installed

.PHONY: run test install proto bench clean

run: install ## install, start every part, print the URLs; Ctrl-C stops all
	$(BIN)/python -m stack

test: install ## install and run every test (PostgreSQL too when PMS_TEST_POSTGRES_URL is set)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]' --config-settings editable_mode=compat
	@touch $@

proto: install ## regenerate pms_common/protos from proto/*.proto
	$(BIN)/python -m pms_common.protos.codegen

bench: install ## measure the system (see bench/README.md); needs wrk
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: ## remove the virtualenv, local data and run files
	rm -rf $(VENV) data .run
