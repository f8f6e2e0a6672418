#!/usr/bin/env bash
# Set up everything (Python packages, Debian chromium, espeak-ng) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
. .venv/bin/activate
export RAY_AUTH_MODE=disabled
ruff check runtime workers gradio_ext tests scripts examples
mypy  # [tool.mypy] in pyproject.toml: runtime/, workers/, gradio_ext/; strict on the wire
python -m pytest -q -p no:cacheprovider --durations=30 "$@"  # the slowest 30: where the suite's time goes
