#!/usr/bin/env bash
# Set up and run the main demo (face detection on your webcam, handlers in Ray workers) on
# the embedded default config: a local Ray started in-process, no cluster needed.
# Open http://127.0.0.1:7860 and press start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The embedded Ray runs without its token auth: it binds 127.0.0.1 only, every port of it
# (runtime/front/ray_start.py), so only this machine reaches it. The page is on 127.0.0.1 too
# (GRADIO_SERVER_NAME=0.0.0.0 serves it to the network: then set gateway.auth, docs/deployment.md).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec python examples/face_detection/app.py "$@"
