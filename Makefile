# Quick start: `make demo` and `make test` each set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint format bench clean install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: an open range would pull a CUDA build of several GB.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install $(TORCH_PIN)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/slimmable train configs/demo.yaml --out runs/demo

test: $(VENV)/.installed-test
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(VENV)/.installed-test
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
