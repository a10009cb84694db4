# Two entry points do all the set-up on a fresh machine:
#   make run   - install opir with what the benchmarks need into .venv, then print
#                platform facts and benchmarks
#   make test  - install with the test tools too, lint, type-check, then run the whole
#                test suite
# Requirements: Python >= 3.11 and a C++20 compiler (g++ >= 10 or clang >= 13) for
# the cpu provider (docs/install.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP      := $(VENV)/.opir-installed
TEST_STAMP := $(VENV)/.opir-test-installed
# No cache location is forced here: `make run`, `opir build` and a user's own
# script all use the same default (OPIR_CACHE_DIR, else $XDG_CACHE_HOME/opir,
# else ~/.cache/opir), so what `make run` builds is reused everywhere.

.PHONY: install run test lint typecheck clean

install: $(STAMP)

# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(TEST_STAMP)

run: $(STAMP)
	$(VENV)/bin/opir info
	$(VENV)/bin/opir build
	$(VENV)/bin/opir bench dispatch
	$(VENV)/bin/opir bench kernels --short
	$(VENV)/bin/opir bench compile --short
	$(VENV)/bin/opir bench model --short --layers 2
	$(VENV)/bin/torchrun --standalone --nproc-per-node 2 examples/tp_demo.py

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .

# mypy on src/opir and tests/typing (the files and settings are in pyproject.toml)
typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy

# Two workers (pytest-xdist), each taking whole files: the suite keeps a 2-core machine
# busy instead of one core, inside its 15-minute budget. TEST_WORKERS=0 runs it in one
# process.
TEST_WORKERS ?= 2
test: $(TEST_STAMP) lint typecheck
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache build dist src/*.egg-info
