# UniMed — every target sets up what it needs. `make demo` runs the main job, `make test` the tests.
# One virtual environment (.venv) holds the package, its tests and the benchmarks; every install goes
# through constraints.txt so that torch stays pinned (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint format bench clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,bench,semisynthetic,slicer]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m unimed_core.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(VENV)/bin/ruff check unimed_core tests
	$(VENV)/bin/ruff format --check unimed_core tests

format: $(STAMP)
	$(VENV)/bin/ruff format unimed_core tests
	$(VENV)/bin/ruff check --fix unimed_core tests

clean:
	rm -rf $(VENV) build *.egg-info
