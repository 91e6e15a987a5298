#!/usr/bin/env bash
# make bench: services up, then every bench/*.py in turn with this script's arguments passed
# through (`scripts/bench.sh --json` prints each bench's JSON object, one per line, and nothing
# else on stdout). Exits non-zero when any bench fails; the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."

# services.sh talks on stdout; keep stdout for the benches' results.
scripts/services.sh >&2
source scripts/test-env.sh
# The test suite clears the cache before every test, and the cache is REDIS_URL's database:
# a FLUSHDB there while a bench runs deletes its channel-layer groups mid-measurement. Benches
# get a database of their own so `make bench` and `make test` can run side by side.
export REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/2}

shopt -s nullglob
status=0
ran=0
for bench in bench/*.py; do
  # Files starting with an underscore (__init__.py, shared helpers) are not benches.
  case "${bench#bench/}" in _*) continue ;; esac
  echo "==> $bench $*" >&2
  ran=$((ran + 1))
  if ! .venv/bin/python "$bench" "$@"; then
    echo "==> $bench FAILED" >&2
    status=1
  fi
done
if [ "$ran" -eq 0 ]; then
  echo "no benches found in bench/" >&2
  exit 1
fi
[ $status -eq 0 ] || echo "make bench: FAILED (see above)" >&2
exit $status
