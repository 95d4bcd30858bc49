#!/usr/bin/env bash
# `make test-e2e`: install/build the tier's tools (cached), then run tests/e2e with pytest inside a
# network namespace of its own (e2e/netns.sh). Arguments go to pytest:
#   bash e2e/run-tests.sh -k sip -x        E2E_CALLS=10 bash e2e/run-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
bash e2e/build-tools.sh
exec bash e2e/netns.sh env RENTAL_E2E=1 "$PY" -m pytest tests/e2e "$@"
