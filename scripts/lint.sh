#!/usr/bin/env bash
# ruff (format and lint) and mypy --strict; exits non-zero when any of them complains.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/test-env.sh
status=0
echo "==> ruff format --check"; .venv/bin/ruff format --check . || status=1
echo "==> ruff check";          .venv/bin/ruff check . || status=1
echo "==> mypy --strict";       .venv/bin/mypy . || status=1
exit $status
