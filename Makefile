# Two commands matter: `make demo` and `make test`. Both run setup first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/node/node_modules/.bin:/usr/sbin:$(PATH)

.PHONY: setup test demo bench lint contracts firmware clean

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests hil_tests

demo: setup
	$(PY) -m sim.demo

contracts: setup
	$(PY) contracts/build.py

firmware: setup
	$(PY) -m tools.release build

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) node/node_modules .pytest_cache .hypothesis
