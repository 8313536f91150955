# Two commands matter: `make run` (gateway + demo data) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench install clean

$(BIN)/fhir-gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/fhir-gateway

run: install
	$(BIN)/fhir-gateway serve

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/store_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
