#!/usr/bin/env bash
# make run: the whole product on one laptop with the embedded defaults (SQLite, in-memory
# channel layer, file-system Celery broker with worker and beat, local payments).
#
# DEBUG stays off, as in production: people trying the product meet its own error pages, not
# Django's debug pages that list every URL (DEBUG=1 make run brings those back for
# development). So this sets what production would set: a secret key (made once, kept under
# var/), the hosts, plain HTTP on loopback, static files served by WhiteNoise from the source
# folders (no collectstatic), and the test-card payment provider allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8000}
export SITE_URL=${SITE_URL:-http://127.0.0.1:$PORT}
export DEBUG=${DEBUG:-0}
export HTTPS=${HTTPS:-0}
export STATIC_MANIFEST=${STATIC_MANIFEST:-0}
export ALLOWED_HOSTS=${ALLOWED_HOSTS:-127.0.0.1,localhost}
export LOCAL_PAYMENTS_ALLOWED=${LOCAL_PAYMENTS_ALLOWED:-1}
export PARLEY_VAR_DIR=${PARLEY_VAR_DIR:-$PWD/var}
var_dir=$PARLEY_VAR_DIR
mkdir -p "$var_dir/celery"
if [ -z "${SECRET_KEY:-}" ]; then
  key_file="$var_dir/secret-key"
  if [ ! -s "$key_file" ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))' >"$key_file")
  fi
  SECRET_KEY=$(cat "$key_file")
  export SECRET_KEY
fi

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "Port $PORT is already in use; stop what runs there or run: PORT=8001 make run" >&2
  exit 1
fi

.venv/bin/python manage.py migrate --noinput -v 0
.venv/bin/python manage.py seed_demo

# One worker process with beat embedded, consuming all three queues (config/celery.py): enough
# for a laptop, and beat's schedule file stays under var/ so restarts keep it. A deployment runs
# a worker per queue instead, so a slow mail server never delays a room's close or a payment.
.venv/bin/celery -A config worker --beat --concurrency 1 --loglevel WARNING \
  --queues money,rooms,email --schedule "$var_dir/celery/beat-schedule" &
celery_pid=$!
trap 'kill "$celery_pid" 2>/dev/null; wait "$celery_pid" 2>/dev/null' EXIT INT TERM

daphne_args=(-b 127.0.0.1 -p "$PORT")
# Behind a proxy (TRUSTED_PROXY_COUNT or TRUSTED_CLIENT_IP_HEADER, config/settings.py) Daphne
# takes the scheme and the client's address for its logs from the proxy's headers. With
# X-Forwarded-For that address is the left-most entry, which the client writes: logs may show
# a forged one. Rate limits do not rely on it: they read the trusted hop themselves
# (config/ratelimits.py).
if [ "${TRUSTED_PROXY_COUNT:-0}" != 0 ] || [ -n "${TRUSTED_CLIENT_IP_HEADER:-}" ]; then
  daphne_args+=(--proxy-headers)
  if [ -n "${TRUSTED_CLIENT_IP_HEADER:-}" ]; then
    daphne_args+=(--proxy-headers-host "$TRUSTED_CLIENT_IP_HEADER")
  fi
fi

echo "Serving on http://127.0.0.1:$PORT (Ctrl-C stops it)"
.venv/bin/daphne "${daphne_args[@]}" config.asgi:application
