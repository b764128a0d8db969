# wsgiproxy: `make run` starts the simulator plus the proxy; `make test` runs every test.
# Works from a clean clone with only Python 3 on PATH: the first target builds .venv.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 3001
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all venv run test smoke bench clean distclean

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

# Load benchmark (tests/bench/): the proxy next to a direct fake upstream and nginx; about 8 minutes.
# BENCH_ARGS=--quick (about 1 minute), --soak (100k requests, RSS growth), --profile (needs py-spy).
# Needs wrk, nginx and its echo module: installed with apt-get when missing and running as root.
BENCH_DEBS := wrk nginx-light libnginx-mod-http-echo
bench: $(STAMP)
	@if ! command -v wrk >/dev/null || ! test -x /usr/sbin/nginx || \
	    ! test -e /usr/lib/nginx/modules/ngx_http_echo_module.so; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_DEBS) >/dev/null; \
	  else \
	    echo "make bench needs: $(BENCH_DEBS) (Debian packages); install them as root, then rerun" >&2; exit 1; \
	  fi; \
	fi
	@case "$(BENCH_ARGS)" in *--profile*) $(VPY) -m pip install --quiet py-spy;; esac
	$(VPY) -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf .run .pytest_cache .hypothesis .mypy_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
