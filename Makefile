# The two commands a fresh machine needs: `make demo` and `make test`.
# Each creates .venv and installs the hash-pinned dev lock (requirements/dev.txt); the stamp makes the second run fast.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/dev.txt
STAMP  := $(VENV)/.installed-lock

.PHONY: demo test test-fast lint schemas lock lock-upgrade lock-check wheel clean help

help:
	@echo "make demo   - start a throwaway broker + Redis, build a demo bundle, stream images through one worker"
	@echo "make test   - the whole test suite (real broker and redis-server, started by the fixtures)"
	@echo "make test-fast - the unit tests only (tests/unit, no broker or Redis; 1.5 min on a shared 2-core box, see README)"
	@echo "make lint   - ruff (lint + format check) and mypy"
	@echo "make schemas - regenerate the JSON Schema files in schemas/"
	@echo "make lock   - recompile requirements/*.txt from pyproject.toml (keeps pins that still fit; make lock-upgrade takes the newest)"
	@echo "make lock-check - fail when pyproject.toml and requirements/*.txt disagree (also a contracts test)"
	@echo "make wheel  - build the wheel into dist/ and list what it ships (worker and schemas only)"

# Every install is hash-checked against the lock; the project itself goes in without dependencies
# (and without build isolation: setuptools comes from the lock too), so nothing unpinned is fetched.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
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
	$(BIN)/python -m mypy worker schemas devkit bench export

schemas: $(STAMP)
	$(BIN)/python -m schemas

lock: $(STAMP)
	$(BIN)/python -m devkit.lock

lock-upgrade: $(STAMP)
	$(BIN)/python -m devkit.lock --upgrade

lock-check: $(STAMP)
	$(BIN)/python -m devkit.lock --check

wheel: $(STAMP)
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	$(BIN)/python -m zipfile -l dist/aigis-*.whl | awk 'NR > 1 {print $$1}' | cut -d/ -f1 | sort | uniq -c

clean:
	rm -rf $(VENV) .aigis .pytest_cache dist build
