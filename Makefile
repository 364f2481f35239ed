# Two commands do all the set-up on a fresh machine with Python 3.11+: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
STAMP_NODE := node_modules/.installed

.PHONY: run demo test test-parallel lint lint-python lint-spec contract-check typecheck migrate clean system-deps clients clients-python clients-typescript

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# --no-compile: a module is byte-compiled when first imported, not every module of pandas,
# polars and pyarrow at install time (most of a fresh clone's set-up otherwise).
$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e ".[embedded]"
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	touch $@ $(STAMP_RUN)

# The pinned npm tools (package-lock.json): Spectral, openapi-typescript, tsc, playwright-core.
$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

## Serve the API on http://127.0.0.1:8000 with live ingestion (embedded PostgreSQL unless DATABASE_URL is set).
## On the embedded database, the first run loads DEMO_DAYS of demo history first (make demo).
run: $(STAMP_RUN)
	@if [ -z "$$DATABASE_URL" ]; then $(MAKE) --no-print-directory demo; fi
	$(BIN)/mdp serve

## Demo history: DEMO_DAYS (3) days of synthetic trades before the oldest stored one; a no-op once there.
DEMO_DAYS ?= 3
demo: $(STAMP_RUN)
	$(BIN)/mdp backfill --days $(DEMO_DAYS)

## Bring the database named by DATABASE_URL (or the embedded one) to the newest schema.
migrate: $(STAMP_RUN)
	$(BIN)/mdp migrate

## Debian packages the tests run as real processes (Chromium, PgBouncer); installs what is missing.
system-deps:
	bash tools/system-deps.sh

# Test workers (pytest-xdist), each with a PostgreSQL server of its own; most tests wait on
# processes and sockets, so more workers than the 2 cores CI has still pay.
TEST_WORKERS ?= 3
# A module's tests stay on one worker, so its module-scoped servers start once.
PYTEST_PARALLEL = $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

## Lint, type-check and run the whole suite against a real PostgreSQL.
# Two passes: everything else on TEST_WORKERS workers, then the tests marked `timing` (they
# assert wall-clock bounds, which the other workers' load would break) one at a time.
# lint-spec and contract-check run inside the suite (tests/contract/test_lint.py and
# test_contract_check.py run the same commands): not twice.
test: $(STAMP_TEST) $(STAMP_NODE) system-deps lint-python typecheck
	$(PYTEST_PARALLEL) -m "not timing" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m timing $(PYTEST_ARGS)

## Only the parallel pass, on what PYTEST_ARGS names (.ci/run: the tests run on PostgreSQL 15).
test-parallel: $(STAMP_TEST)
	$(PYTEST_PARALLEL) $(PYTEST_ARGS)

lint: lint-spec lint-python

lint-python: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP_TEST)
	$(BIN)/mypy

## The contract: Spectral (spectral:oas plus the rules in .spectral.yaml) and openapi-spec-validator.
lint-spec: $(STAMP_TEST) $(STAMP_NODE)
	npx --no-install spectral lint --fail-severity=warn openapi/openapi.yaml
	$(BIN)/openapi-spec-validator openapi/openapi.yaml

## Fail on a breaking change against openapi/released/v<major>.yaml unless the major was bumped.
contract-check: $(STAMP_TEST)
	$(BIN)/python tools/contract_check.py

## Generate the Python and TypeScript clients of the contract into clients/generated (clients/README.md).
CLIENTS ?= clients/generated
clients: clients-python clients-typescript

clients-python: $(STAMP_TEST)
	$(BIN)/openapi-python-client generate --path openapi/openapi.yaml --config clients/python.yaml --meta setup --output-path $(CLIENTS)/python --overwrite

# Enums become string-literal unions (openapi-typescript's default; --enum is not used).
clients-typescript: $(STAMP_NODE)
	npx --no-install openapi-typescript openapi/openapi.yaml --output $(CLIENTS)/typescript/schema.d.ts

## Benchmark the service against the floor app with wrk (bench/README.md); BENCH_ARGS="--duration 5".
.PHONY: bench
bench: $(STAMP_TEST)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## Bulk exports against PostgreSQL's COPY, and peak memory exporting 10M rows (bench/README.md).
.PHONY: bench-exports
bench-exports: $(STAMP_TEST)
	$(BIN)/python -m bench.exports $(BENCH_ARGS)

## mdp import (CSV, Parquet) and mdp backfill against a plain COPY of the same 10M rows (bench/README.md).
.PHONY: bench-import
bench-import: $(STAMP_TEST)
	$(BIN)/python -m bench.imports $(BENCH_ARGS)

## A venue feed replayed: ingestion rate, heartbeat, read latency, recovery rate (bench/feeds.py).
.PHONY: bench-feeds
bench-feeds: $(STAMP_TEST)
	$(BIN)/python -m bench.feeds $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info node_modules
