# Quick start (fresh machine with Python 3.11):
#   make demo   - create .venv, install sparsify, run `sparsify demo`
#   make test   - create .venv, install sparsify with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch; other versions may pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO_OUT ?= sparsify-demo

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"

demo: install
	$(BIN)/sparsify demo -o $(DEMO_OUT)

test: install-dev
	$(BIN)/python -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
