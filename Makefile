# Two entry points (README quick start): `make run` and `make test`.
# Each creates .venv if missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench-storage clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rmqz up --topology dledger3

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench-storage: $(STAMP)
	$(BIN)/rmqz bench storage

clean:
	rm -rf $(VENV) build *.egg-info
