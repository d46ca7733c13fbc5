# UniMed — every target sets up what it needs. `make demo` runs the main job, `make test` the tests.
# One virtual environment (.venv) holds the package, its tests and the benchmarks; every install goes
# through constraints.txt so that torch stays pinned (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# MONAI Label's server pins conflict with the project's (pydicom 2 for pydicom-seg, no highdicom), so the
# server gets its own environment; the test env only needs MONAI Label's client (installed --no-deps).
ML_VENV ?= .venv-monailabel
ML_STAMP := $(ML_VENV)/.installed
LABEL_STUDIES ?= outputs/label_studies
LABEL_PORT ?= 8000
LINTED := unimed_core tests benchmarks slicer_extension monailabel_app

.PHONY: install demo test test-slow lint format clean label-env label-server bench bench-full

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,bench,semisynthetic,slicer]'
	$(PIP) install --quiet --no-deps -c constraints.txt monailabel==0.8.5
	touch $(STAMP)

$(ML_STAMP): setup.py monailabel_app/requirements.txt monailabel_app/constraints.txt
	test -x $(ML_VENV)/bin/python || $(PYTHON) -m venv $(ML_VENV)
	$(ML_VENV)/bin/pip install --quiet -c monailabel_app/constraints.txt -r monailabel_app/requirements.txt
	$(ML_VENV)/bin/pip install --quiet --no-deps -c monailabel_app/constraints.txt monailabel==0.8.5 pydicom-seg==0.4.1 -e .
	touch $(ML_STAMP)

label-env: $(ML_STAMP)

# MONAI Label server on the shipped sample studies, bound to 127.0.0.1 (LABEL_PORT=8000 by default)
label-server: $(ML_STAMP)
	mkdir -p $(LABEL_STUDIES) && cp -n bundle/sample/*.nii.gz $(LABEL_STUDIES)/
	$(ML_VENV)/bin/python -m monailabel.main start_server --app monailabel_app --studies $(LABEL_STUDIES) --host 127.0.0.1 --port $(LABEL_PORT)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m unimed_core.demo

test: $(STAMP) $(ML_STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP) $(ML_STAMP)
	$(PY) -m pytest -m slow -q

# benchmarks/results/*.json and docs/benchmarks.md: quick mode < 15 min on 2 cores; full mode takes hours
bench: $(STAMP)
	$(PY) -m benchmarks.run_all --mode quick

bench-full: $(STAMP)
	$(PY) -m benchmarks.run_all --mode full

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: $(STAMP)
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) $(ML_VENV) build *.egg-info
