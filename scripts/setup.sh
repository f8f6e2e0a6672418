#!/usr/bin/env bash
# Install everything rtcpool needs on a fresh Debian machine: system packages (as root, via
# apt-get) and a virtual environment at .venv with rtcpool installed in editable mode, every
# dependency at the version CI tested (constraints.txt, made by scripts/lock.sh).
#   scripts/setup.sh              runtime and examples (the demo)
#   scripts/setup.sh --test       plus test and benchmark tools, Debian chromium, espeak-ng, sox
#   scripts/setup.sh --tools-only just .venv with uv in it (scripts/lock.sh)
# uv installs the packages: it resolves and links them several times faster than pip
# (README: "Set-up time"). Without network access to PyPI nothing here works offline.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9  # the installer, pinned like everything else it installs

mode=${1:-}
apt_packages=()
if [ "$mode" = "--test" ]; then
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
if [ "$(.venv/bin/uv --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
  .venv/bin/python -m pip install -qq --disable-pip-version-check "uv==$UV_VERSION"
fi
[ "$mode" = "--tools-only" ] && exit 0

extras=examples
[ "$mode" = "--test" ] && extras=test,examples,bench
.venv/bin/uv pip install --quiet --python .venv/bin/python --constraints constraints.txt \
  --editable ".[$extras]"
