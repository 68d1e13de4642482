# The two commands of the quick start, plus benchmarks. Each target sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned here (CPU build) so that no multi-GB CUDA build is pulled in;
# the project's own requirement is a range that this version satisfies.
TORCH_PIN := torch==2.13.0
# Bytecode caches make the many subprocesses of the suite (CLI, training process, demo)
# start in seconds instead of recompiling torch and napari each time.
unexport PYTHONDONTWRITEBYTECODE
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"

.PHONY: demo test lint bench bench-quick bench-fusion bench-collapse env sysdeps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[testing]"
	touch $(STAMP)

env: $(STAMP)

sysdeps:
	@bash scripts/install_system_deps.sh

demo: $(STAMP) sysdeps
	$(VENV)/bin/napari-softseg demo

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check napari_softseg

test: $(STAMP) sysdeps lint
	$(XVFB) $(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP) sysdeps
	$(XVFB) $(PY) -m benchmarks.run_all

bench-quick: $(STAMP) sysdeps
	$(XVFB) $(PY) -m benchmarks.run_all --quick

# separate studies (benchmarks/README.md gives their cost); each writes the reproduction
# table and the verdict again with its results
bench-fusion: $(STAMP)
	$(PY) -m benchmarks.run_all --only fusion thesis verdict

bench-collapse: $(STAMP)
	$(PY) -m benchmarks.run_all --only collapse thesis verdict

clean:
	rm -rf $(VENV) build *.egg-info demo_output
