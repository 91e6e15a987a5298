#!/usr/bin/env bash
# Installs localstripe, the fake Stripe server the tests talk to, into its own virtualenv.
# It is GPL-licensed test tooling run as a separate process: it never enters Parley's venv,
# and nothing of it is shipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-localstripe
VERSION=1.15.10
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import localstripe, aiohttp" 2>/dev/null \
   && [ "$("$VENV/bin/python" -m pip show localstripe 2>/dev/null | sed -n 's/^Version: //p')" = "$VERSION" ]; then
  exit 0
fi
echo "==> installing localstripe $VERSION into $VENV"
rm -rf "$VENV"
python_bin=$(command -v python3.11 || command -v python3)
"$python_bin" -m venv "$VENV"
log=$(mktemp)
if ! "$VENV/bin/python" -m pip install --quiet "localstripe==$VERSION" >"$log" 2>&1; then
  grep -v '^WARNING: Location' "$log" | tail -n 40 >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
