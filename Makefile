# One command each: setup, the main job, the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup main test models
setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

main:
	$(BIN)/ttscale sweep

test:
	$(BIN)/pytest

# Reproduce the shipped model family from scratch (about 2 hours on 2 CPU cores).
models:
	$(BIN)/ttscale train family --out models
