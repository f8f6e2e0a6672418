#!/usr/bin/env bash
# Set up and run the main demo (face detection on your webcam, handlers in Ray workers) on
# the embedded default config: a local Ray started in-process, no cluster needed.
# Open http://127.0.0.1:7860 and press start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec python examples/face_detection/app.py "$@"
