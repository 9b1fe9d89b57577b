#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv, then activates it.
# Sourced by scripts/main.sh and scripts/test.sh, so each README command works on a fresh machine.
#
# Overrides for users elsewhere:
#   GEOCANON_PYTHON      interpreter used to create the venv (default: python3.11, else python3)
#   GEOCANON_TORCH       pip requirement for torch, installed FIRST (default: torch==2.13.0, the CPU
#                        wheel; e.g. GEOCANON_TORCH="torch==2.13.0" with PIP_INDEX_URL/PIP_EXTRA_INDEX_URL
#                        pointing at a CUDA index for GPU machines)
#   GEOCANON_VENV        where the venv lives (default: .venv in the repository)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GEOCANON_VENV:-$ROOT/.venv}"
PY="${GEOCANON_PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_REQ="${GEOCANON_TORCH:-torch==2.13.0}"

# open3d needs the system library libusb-1.0 (Debian/Ubuntu package libusb-1.0-0).
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[geocanon] installing libusb-1.0-0 for open3d" >&2
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "[geocanon] warning: libusb-1.0 not found and no apt-get; open3d may fail to import" >&2
  fi
fi

STAMP="$VENV/.geocanon-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_REQ"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[geocanon] setting up $VENV with $PY ($TORCH_REQ first)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q "$TORCH_REQ"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,molecules,nequip]" "$TORCH_REQ"
  echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
