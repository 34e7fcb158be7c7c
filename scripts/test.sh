#!/usr/bin/env bash
# The test suite (unit + end-to-end on the real pipeline); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
exec .venv/bin/python -m pytest -ra --durations=30 "$@"
