# Two entry points do all the set-up on a fresh machine:
#   make run   - install into .venv, then print platform facts and benchmarks
#   make test  - install if needed, lint, type-check, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.opir-installed
# Compiled artefacts (Inductor, C++ extensions) go to one predictable place.
export OPIR_CACHE_DIR ?= $(CURDIR)/.cache/opir
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor

.PHONY: install run test lint typecheck clean

install: $(STAMP)

# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/opir info
	$(VENV)/bin/opir build
	$(VENV)/bin/opir bench dispatch
	$(VENV)/bin/opir bench kernels --short
	$(VENV)/bin/opir bench compile --short
	$(VENV)/bin/opir bench model --short --layers 2
	$(VENV)/bin/torchrun --standalone --nproc-per-node 2 examples/tp_demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy on src/opir and tests/typing (the files and settings are in pyproject.toml)
typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
