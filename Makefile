# Two commands for a fresh machine: `make demo` and `make test`.
# .venv is rebuilt only when pyproject.toml changes (the stamp file tracks it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check test-tensorflow test-jax test-torch lint bench clean

# constraints.txt pins the versions seen working together (regenerate with pip freeze).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,compare]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/keras-condensa demo

# The three backend legs run at the same time (each prints its report when it ends): they share
# CI's two cores and end together, sooner than one after another (about 20 min in all here).
test: check
	$(MAKE) --no-print-directory -j3 --output-sync=target test-tensorflow test-jax test-torch

# Lint (the rules in pyproject.toml) runs first: it takes seconds.
check: $(STAMP)
	$(VENV)/bin/ruff check .

test-tensorflow: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q tests

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q tests

lint: check
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
