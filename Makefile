# Two commands for a fresh machine: `make demo` and `make test`.
# .venv is rebuilt only when pyproject.toml changes (the stamp file tracks it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-tensorflow test-jax lint bench clean

# constraints.txt pins the versions seen working together (regenerate with pip freeze).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,compare]"
	touch $(STAMP)

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(VENV)/bin/keras-condensa demo

test: test-tensorflow test-jax

test-tensorflow: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
