#!/usr/bin/env bash
# Set up everything (Python packages, Debian chromium, espeak-ng) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
. .venv/bin/activate
export RAY_AUTH_MODE=disabled
ruff check runtime workers gradio_ext tests scripts examples
mypy  # [tool.mypy] in pyproject.toml: runtime/, workers/, gradio_ext/; strict on the wire
# two test processes (pytest-xdist, a module's tests in one process: module fixtures such as an
# app stay shared; the longest files first: tests/conftest.py LONGEST_FILES), then the tests
# that measure the machine's CPU, alone. --durations: the slowest 30, where the suite's time
# goes. Exit 5 is "no test selected" (a path given to it).
python -m pytest -q -p no:cacheprovider -n "${RTCPOOL_TEST_PROCESSES:-2}" --dist loadfile --no-loadscope-reorder -m "not alone" --durations=30 "$@"
python -m pytest -q -p no:cacheprovider -m alone "$@" || [ $? -eq 5 ]
