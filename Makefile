# The two commands a fresh machine needs: `make demo` and `make test`.
# Each creates .venv and installs what it needs; the stamp makes the second run fast.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-all

.PHONY: demo test test-fast lint schemas clean help

help:
	@echo "make demo   - start a throwaway broker + Redis, build a demo bundle, stream images through one worker"
	@echo "make test   - the whole test suite (real broker and redis-server, started by the fixtures)"
	@echo "make test-fast - the unit tests only (tests/unit, under a minute, no broker)"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make schemas - regenerate the JSON Schema files in schemas/"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[export,dev]'
	@touch $@

demo: $(STAMP)
	$(BIN)/python -m export demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m unit -q

lint: $(STAMP)
	$(BIN)/ruff check worker export schemas tests devkit bench
	$(BIN)/ruff format --check worker export schemas tests devkit bench
	$(BIN)/python -m mypy worker schemas devkit

schemas: $(STAMP)
	$(BIN)/python -m schemas

clean:
	rm -rf $(VENV) .aigis .pytest_cache
