# openami: `make run` starts the platform with a simulated fleet, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench venv clean postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -e . --group dev
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/openami run --sim 1000

postgres:
	bash scripts/ensure-postgres.sh

test: $(STAMP) postgres
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src/openami/protocols src/openami/security src/openami/domain src/openami/db
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src/openami/protocols src/openami/security src/openami/domain src/openami/db
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/openami bench dlms
	$(VENV)/bin/openami bench ingest --values 1000000
	$(VENV)/bin/openami bench collect --meters 1000

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
