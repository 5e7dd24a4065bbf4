# One command each: setup, the main job, the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup main test models llamacpp-server wheel
setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"

# main and test set up the environment first on a fresh machine (or after pyproject changes).
$(BIN)/ttscale: pyproject.toml
	$(MAKE) setup
	touch $@

main: $(BIN)/ttscale
	$(BIN)/ttscale sweep

test: $(BIN)/ttscale
	$(BIN)/pytest

# A wheel (shipped models included as package data) in dist/.
wheel: $(BIN)/ttscale
	$(BIN)/pip wheel . --no-deps --no-build-isolation -w dist

# A llama.cpp server on Gemma 3 270M (GGUF) at http://127.0.0.1:8080/v1 (builds it the first time).
llamacpp-server:
	scripts/llamacpp_server.sh

# Reproduce the shipped model family from scratch (about 2 hours on 2 CPU cores).
models:
	$(BIN)/ttscale train family --out models
