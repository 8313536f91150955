# Two commands matter: `make run` (gateway + demo data) and `make test` (everything,
# HAPI included: the tests start docker/hapi-local on a free port and stop it after).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HAPI_JAR := docker/hapi-local/target/hapi-local.jar

.PHONY: run test bench install hapi clean

$(BIN)/fhir-gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/fhir-gateway

$(HAPI_JAR): docker/hapi-local/pom.xml $(shell find docker/hapi-local/src -type f)
	docker/hapi-local/run build

hapi: $(HAPI_JAR)

run: install
	$(BIN)/fhir-gateway serve

test: install hapi
	$(BIN)/ruff check --select F,E9 fhir_gateway adapters tests bench scripts
	$(BIN)/python -m pytest -q

bench: install hapi
	$(BIN)/python bench/store_bench.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/validation_bench.py
	$(BIN)/python bench/adapter_bench.py
	$(BIN)/python bench/eligibility_bench.py
	$(BIN)/python bench/auth_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache docker/hapi-local/target
