#!/usr/bin/env bash
# make run: the whole product on one laptop with the embedded defaults (SQLite, in-memory
# channel layer, file-system Celery broker with worker and beat, local payments).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG=${DEBUG:-1}
PORT=${PORT:-8000}
export SITE_URL=${SITE_URL:-http://127.0.0.1:$PORT}

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "Port $PORT is already in use; stop what runs there or run: PORT=8001 make run" >&2
  exit 1
fi

.venv/bin/python manage.py migrate --noinput -v 0
.venv/bin/python manage.py seed_demo

mkdir -p var/celery
# One worker process with beat embedded: enough for a laptop, and beat's schedule file stays
# under var/ so restarts keep it.
.venv/bin/celery -A config worker --beat --concurrency 1 --loglevel WARNING \
  --schedule var/celery/beat-schedule &
celery_pid=$!
trap 'kill "$celery_pid" 2>/dev/null; wait "$celery_pid" 2>/dev/null' EXIT INT TERM

echo "Serving on http://127.0.0.1:$PORT (Ctrl-C stops it)"
.venv/bin/daphne -b 127.0.0.1 -p "$PORT" config.asgi:application
