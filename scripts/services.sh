#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis are installed (as root), running, and that PostgreSQL has
# the role and database the tests use; installs coturn, nftables and Chromium for the
# end-to-end call and the browser tests. Safe to run any number of times.
set -euo pipefail

PG_ROLE=${PG_ROLE:-parley}
PG_PASSWORD=${PG_PASSWORD:-parley}
PG_DB=${PG_DB:-parley}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

is_root() { [ "$(id -u)" = 0 ]; }
say() { printf '==> %s\n' "$*"; }

apt_install() {
  if ! is_root; then
    echo "Missing system packages: $*. Install them (as root: apt-get install $*)." >&2
    exit 1
  fi
  say "installing $*"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
# The end-to-end call test (rooms/tests/test_call_e2e.py) starts its own coturn inside a
# loopback-only network namespace (`ip`, `unshare`); coturn is never started here.
command -v turnserver >/dev/null || missing+=(coturn)
command -v ip >/dev/null || missing+=(iproute2)
# The browser tests (rooms/tests/browser/) drive Debian's Chromium through Playwright's
# executable_path; Playwright's own browser download is never used.
command -v chromium >/dev/null || missing+=(chromium chromium-driver)
command -v nft >/dev/null || missing+=(nftables)  # the browser tests cut UDP for an outage
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# --- PostgreSQL ---------------------------------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
  is_root || { echo "PostgreSQL is not running on port $PG_PORT; start it." >&2; exit 1; }
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ] || [ ! -d "/etc/postgresql/$version/main" ]; then
    version=${version:-15}
    say "creating PostgreSQL cluster $version/main"
    pg_createcluster "$version" main >/dev/null
  fi
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.5; done
fi

psql_admin() {
  if is_root; then
    runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"
  else
    psql -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"
  fi
}
# Already set up? Then no administrator access is needed (the usual case for a non-root user).
role_ready() {
  PGPASSWORD=$PG_PASSWORD psql -w -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ROLE" -d "$PG_DB" -qtA \
    -c "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>/dev/null | grep -qx t
}
if ! role_ready; then
  if ! is_root && ! psql_admin -c "SELECT 1" >/dev/null 2>&1; then
    echo "PostgreSQL needs a role $PG_ROLE (password $PG_PASSWORD, CREATEDB) owning a database" \
      "$PG_DB; run make test once as root, or create them as the postgres user." >&2
    exit 1
  fi
  # The tests create and drop their own database, so the role needs CREATEDB.
  if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" != 1 ]; then
    say "creating PostgreSQL role $PG_ROLE"
    psql_admin -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
  fi
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    say "creating PostgreSQL database $PG_DB"
    psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE"
  fi
fi

# --- Redis --------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
    --logfile "${TMPDIR:-/tmp}/parley-redis-$REDIS_PORT.log"
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
