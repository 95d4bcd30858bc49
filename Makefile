# Two commands for a fresh machine (Python 3.11+): `make dev` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup dev start console check test bench bench-state clean

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

# the shared State on SQLite and PostgreSQL (section 7 of BENCHMARKS.md, rewritten alone)
bench-state: setup
	$(PY) bench/state.py

clean:
	rm -rf $(VENV) .state .pytest_cache

# End-to-end tier (e2e/, tests/e2e/): a real livekit-server and livekit-sip (pinned, built once
# from the Go module proxy into ~/.cache/rental-e2e), redis-server, sipp and the real worker, in a
# network namespace of their own. E2E_CALLS sets the calls per scenario; E2E_ARGS goes to pytest.
.PHONY: e2e-tools test-e2e

e2e-tools:
	bash e2e/build-tools.sh

test-e2e: setup
	PY=$(PY) bash e2e/run-tests.sh $(E2E_ARGS)
