# Two commands for a fresh machine (Python 3.11+): `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup dev start console check test bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

setup: $(STAMP)

dev: setup
	$(PY) agent.py dev

start: setup
	$(PY) agent.py start

console: setup
	$(PY) agent.py console

check: setup
	$(PY) agent.py check

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .state .pytest_cache
