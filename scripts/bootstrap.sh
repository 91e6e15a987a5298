#!/usr/bin/env bash
# Creates .venv with Python 3.11 and installs the project with its dev tools, and installs
# axe-core (npm, pinned in scripts/axe/) that the browser tests run on every page they visit.
set -euo pipefail
cd "$(dirname "$0")/.."

is_root() { [ "$(id -u)" = 0 ]; }
has_python311() {
  command -v "$1" >/dev/null && "$1" -c 'import sys, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null
}

python_bin=""
for candidate in python3.11 python3; do
  if has_python311 "$candidate"; then python_bin=$(command -v "$candidate"); break; fi
done
if [ -z "$python_bin" ]; then
  # Debian's python3 is 3.11 but ships venv/ensurepip separately.
  if is_root && command -v apt-get >/dev/null; then
    echo "==> installing python3.11 and python3.11-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv >/dev/null
    python_bin=$(command -v python3.11)
  else
    echo "Parley needs Python 3.11 with venv (Debian: apt-get install python3.11-venv)." >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # A half-made venv (interrupted, or made without ensurepip) is rebuilt, not reused.
  rm -rf .venv
  "$python_bin" -m venv .venv
fi

pip_quiet() {
  # pip and setuptools are chatty (index warnings, deprecation notices): show their output only
  # when the install fails, and keep pip's exit status.
  local log status
  log=$(mktemp)
  .venv/bin/python -m pip "$@" >"$log" 2>&1 && status=0 || status=$?
  [ $status -eq 0 ] || grep -v '^WARNING: Location' "$log" | tail -n 40 >&2
  rm -f "$log"
  return $status
}
pip_quiet install --quiet --upgrade pip
pip_quiet install --quiet -e '.[dev]'

# scripts/cluster.sh puts Debian's HAProxy (2.6) in front of its Daphne processes. Only that
# script needs it, so without root this warns instead of failing the install.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if is_root && command -v apt-get >/dev/null; then
    echo "==> installing haproxy"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "scripts/cluster.sh needs HAProxy (Debian: apt-get install haproxy)." >&2
  fi
fi

# axe-core comes from npm: Node.js and npm from Debian, the package from scripts/axe's lock file.
if ! command -v npm >/dev/null; then
  if is_root && command -v apt-get >/dev/null; then
    echo "==> installing nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "The browser tests need Node.js with npm (Debian: apt-get install nodejs npm)." >&2
    exit 1
  fi
fi
# npm ci starts from an empty node_modules each time: skip it when the lock has not changed
# since the last install.
if ! [ scripts/axe/node_modules/.package-lock.json -nt scripts/axe/package-lock.json ]; then
  echo "==> installing axe-core (scripts/axe)"
  npm ci --prefix scripts/axe --no-audit --no-fund --loglevel=error >/dev/null
fi
