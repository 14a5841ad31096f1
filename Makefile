# Everything runs from a project virtualenv that the targets create on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install lock kafka lint format typecheck schemas test test-unit soak demo bench bench-quick check clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install the project with its dev tools

# Every package comes from requirements.lock, checked against its hashes; the project itself
# is installed without resolving anything (its build backend is in the lock as well).
$(VENV)/.installed: pyproject.toml requirements.lock scripts/bootstrap.sh
	scripts/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

lock: ## Re-resolve requirements.lock (pins and hashes) from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu -o requirements.lock

kafka: install ## Fetch the pinned Apache Kafka jars with Maven (cached)
	$(BIN)/python -m metering.broker fetch

lint: install ## ruff, import contracts (.importlinter), bandit, docker-compose.yml against the Compose spec
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/lint-imports --no-cache
	$(BIN)/bandit -q -c pyproject.toml -r runtime schemas billing projections observability readmodel streams notify api web server metering bench

format: install ## Format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install ## mypy --strict over the packages
	$(BIN)/mypy

schemas: install ## Regenerate schemas/jsonschema from the models
	$(BIN)/python -m schemas.generate

test-unit: install ## Unit tests only (no broker)
	$(BIN)/pytest tests/unit

test: install kafka ## All tests: unit, integration and e2e against a real local broker
	$(BIN)/pytest

soak: install kafka ## The fault suite at full size: 500,000 events per run, 5 kills (long)
	METERING_FAULT_EVENTS=500000 METERING_FAULT_KILLS=5 $(BIN)/pytest tests/faults --timeout=7200

demo: install kafka ## Run the demo: local stack, a generated month, close, invoice, stop
	scripts/demo.sh

bench: install kafka ## Benchmarks at full size (2M events end to end, 5M for memory, 10M read model; long)
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.readmodel --events 10000000
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.notifier

bench-quick: install kafka ## Benchmarks at a size that only checks the harness (CI)
	$(BIN)/python -m bench.pipeline --quick
	$(BIN)/python -m bench.readmodel --quick
	$(BIN)/python -m bench.ingest --quick
	$(BIN)/python -m bench.notifier --quick

check: lint typecheck test bench-quick ## What CI runs

clean: ## Remove the virtualenv and local data (not the Kafka jar cache)
	rm -rf $(VENV) .metering .mypy_cache .ruff_cache .pytest_cache .hypothesis
