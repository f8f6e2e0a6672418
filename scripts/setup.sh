#!/usr/bin/env bash
# Install everything rtcpool needs on a fresh Debian machine: system packages (as root, via
# apt-get) and a virtual environment at .venv with rtcpool installed in editable mode.
#   scripts/setup.sh          runtime only (the demo)
#   scripts/setup.sh --test   plus test tools: Debian chromium for browser tests, espeak-ng/sox
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
[ "${1:-}" = "--test" ] && with_test=1

apt_packages=()
if [ "$with_test" = 1 ]; then
  command -v chromium >/dev/null || apt_packages+=(chromium)
  command -v espeak-ng >/dev/null || apt_packages+=(espeak-ng)
  command -v sox >/dev/null || apt_packages+=(sox)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
  else
    echo "setup: please install ${apt_packages[*]} (apt-get, as root)" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "$with_test" = 1 ]; then
  python -m pip install -q -e '.[test,examples]'
else
  python -m pip install -q -e '.[examples]'
fi
