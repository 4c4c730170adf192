# The two commands a newcomer needs:  `make run` (the whole pipeline on the embedded world)  and  `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test lint lock clean

install: $(VENV)/.installed

# Exact versions from requirements.lock, then the project itself (editable, no dependency resolution).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

run: install
	dvc repro

test: install
	python -m pytest -q

lint: install
	ruff check .
	multigeometry deps --check

# Re-resolve the pins after changing dependencies in pyproject.toml.
lock:
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^multigeometry' > requirements.lock

clean:
	rm -rf $(VENV)
