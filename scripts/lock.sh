#!/usr/bin/env bash
# Refresh constraints.txt, the lock of every tested version that scripts/setup.sh installs
# from, then reinstall from it and run the whole suite: a lock lands only with a green run.
#   scripts/lock.sh                 newest releases within pyproject.toml's bounds
#   scripts/lock.sh -P gradio       move just that package (uv pip compile --upgrade-package)
# The lock is universal: one file for every platform and Python that pyproject.toml admits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tools-only
upgrade=(--upgrade)
if [ "${1:-}" = "-P" ]; then
  upgrade=(--upgrade-package "$2")
fi
.venv/bin/uv pip compile pyproject.toml --universal --extra test --extra examples --extra bench \
  --custom-compile-command "scripts/lock.sh" --quiet "${upgrade[@]}" -o constraints.txt
bash scripts/test.sh
