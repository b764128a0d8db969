# wsgiproxy: `make run` starts the simulator plus the proxy; `make test` runs every test.
# Works from a clean clone with only Python 3 on PATH: the first target builds .venv.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 3001
PYTEST_ARGS ?=

.PHONY: all venv run test smoke clean distclean

all: test

venv: $(STAMP)

# Rebuilt when pyproject.toml changes; the editable install picks up code changes by itself.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

# No shell between make and devstack (no `VAR=x cmd` prefix): make's TERM reaches devstack itself.
run: $(STAMP)
	$(VPY) -m servers.devstack --port $(PORT)

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

smoke: $(STAMP)
	$(VPY) tests/smoke.py

clean:
	rm -rf .run .pytest_cache .hypothesis .mypy_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
