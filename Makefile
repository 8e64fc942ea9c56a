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

# Docker images (docker/README.md): rmqz-base:<hash> from Debian's packages (debootstrap, needs
# root; no image registry) and rmqz:<hash> + rmqz:latest from wheels built here. Both are
# cached by content hash: an unchanged tree costs a second. IMAGE_FLAGS=--force rebuilds.
IMAGE_BUILDER := docker/build.py
IMAGE_FLAGS ?=
.PHONY: image

image: $(STAMP)
	$(BIN)/python $(IMAGE_BUILDER) $(IMAGE_FLAGS)
