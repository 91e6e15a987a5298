#!/usr/bin/env bash
# scripts/cluster.sh start|stop|status|revive <service> — the production layout on one machine: HAProxy in front
# of N Daphne processes (round-robin, WebSockets proxied, no sticky sessions), the channel layer
# sharded over two Redis servers, a third Redis for the Celery broker and the cache, two Celery
# workers and beat, PostgreSQL and coturn. Each part is a separate process with its own port,
# pid file and log under CLUSTER_DIR, as a deployment spreads them over several hosts
# (docs/ARCHITECTURE.md, "The layout on several hosts").
#
# PostgreSQL: with DATABASE_URL unset, the machine's cluster that scripts/services.sh starts,
# in a database of its own (parley_cluster, created and migrated, the demo seeded as `make run`
# does). With DATABASE_URL set (the tests, a database elsewhere) that one is used as it is.
#
# Every setting below can be overridden from the environment; the defaults stay clear of
# `make run` (8000), the test services (5432, 6379) and a coturn on 3478.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT_DIR=$PWD

CLUSTER_DIR=${CLUSTER_DIR:-$PROJECT_DIR/var/cluster}
CLUSTER_PORT=${CLUSTER_PORT:-8600}            # the balancer; Daphne k listens on CLUSTER_PORT+k
CLUSTER_DAPHNES=${CLUSTER_DAPHNES:-2}
CLUSTER_REDIS_PORT=${CLUSTER_REDIS_PORT:-6391} # +0, +1: channel-layer shards; +2: broker, cache
CLUSTER_TURN_PORT=${CLUSTER_TURN_PORT:-3491}
CLUSTER_TURN_RELAY_PORTS=${CLUSTER_TURN_RELAY_PORTS:-49700-49899}
CLUSTER_MIGRATE=${CLUSTER_MIGRATE:-1}
CLUSTER_WAIT_SECONDS=${CLUSTER_WAIT_SECONDS:-90}

run_dir=$CLUSTER_DIR/run
log_dir=$CLUSTER_DIR/log
# Start order.
SERVICES=(redis-channels-1 redis-channels-2 redis-broker coturn)
for k in $(seq 1 "$CLUSTER_DAPHNES"); do SERVICES+=("daphne-$k"); done
SERVICES+=(celery-worker-1 celery-worker-2 celery-beat haproxy)

say() { printf '==> %s\n' "$*"; }
die() { printf '%s\n' "$*" >&2; exit 1; }

pid_of() { cat "$run_dir/$1.pid" 2>/dev/null || true; }
# Running, not a zombie: a killed service is nobody's child here, and stays a zombie until
# init reaps it.
alive() {
  local pid state
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One service: a session of its own (its pid is its process group, so `stop` also ends the
# children a Celery worker forks), output to its log, its pid in run/.
launch() {
  local name=$1; shift
  if [ "${launch_append:-0}" = 1 ]; then
    setsid "$@" >>"$log_dir/$name.log" 2>&1 </dev/null &
  else
    setsid "$@" >"$log_dir/$name.log" 2>&1 </dev/null &
  fi
  echo $! >"$run_dir/$name.pid"
}

wait_until() {
  local what=$1 name=$2; shift 2
  local deadline=$((SECONDS + CLUSTER_WAIT_SECONDS))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      echo "$what exited; the end of $log_dir/$name.log:" >&2
      tail -n 30 "$log_dir/$name.log" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "$what was not ready within $CLUSTER_WAIT_SECONDS s; the end of $log_dir/$name.log:" >&2
      tail -n 30 "$log_dir/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Stops services together: SIGTERM to each one's process group, SIGKILL to what is still
# there after 10 s.
stop_group() {
  local name pid pids=() names=()
  for name in "$@"; do
    pid=$(pid_of "$name")
    rm -f "$run_dir/$name.pid"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid") names+=("$name")
  done
  local k deadline=$((SECONDS + 10))
  for k in "${!pids[@]}"; do
    while kill -0 "${pids[k]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "${pids[k]}" 2>/dev/null; then
      echo "${names[k]} did not stop within 10 s; killed." >&2
      kill -KILL -- "-${pids[k]}" 2>/dev/null || kill -KILL "${pids[k]}" 2>/dev/null || true
    fi
  done
}

cmd_stop() {
  # The balancer first (no new requests), then the rest together: each takes seconds to stop
  # on a busy machine, and nothing is left to serve that needs an order among them.
  local daphnes=() file
  for file in "$run_dir"/daphne-*.pid; do  # also those of a start with more Daphnes
    [ -e "$file" ] && daphnes+=("$(basename "$file" .pid)")
  done
  stop_group haproxy
  stop_group celery-beat celery-worker-1 celery-worker-2 "${daphnes[@]}" coturn \
    redis-channels-1 redis-channels-2 redis-broker
}

cmd_status() {
  local name status=0
  for name in "${SERVICES[@]}"; do
    if alive "$name"; then
      printf '%-18s up    pid %s\n' "$name" "$(pid_of "$name")"
    else
      printf '%-18s down\n' "$name"
      status=1
    fi
  done
  return $status
}

secret() {  # a secret made once and kept, as make run keeps its SECRET_KEY
  local file=$CLUSTER_DIR/$1
  if [ ! -s "$file" ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(40))' >"$file")
  fi
  cat "$file"
}

haproxy_config() {
  local k
  cat <<EOF
# Written by scripts/cluster.sh on each start; edit the script, not this file.
global
    # No maxconn: HAProxy derives it from the file-descriptor limit (ulimit -n), two per
    # proxied connection.
    log stdout format raw local0 info
    # For the fault harness and operators: show stat, disable/enable server, etc.
    stats socket $run_dir/haproxy.sock mode 600 level admin

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout http-request 10s
    timeout client 30s
    timeout server 30s
    # An upgraded WebSocket is a tunnel: it stays open while either side speaks (heartbeats
    # every 5 s), and the server's own sweep ends one that falls silent.
    timeout tunnel 1h
    # A request to a Daphne that died and is not yet marked down is sent to another server:
    # when the connection cannot be made, and, for GET and HEAD (a page, a socket's upgrade),
    # also when it was accepted but closed without an answer (a process dying accepts
    # connections until its listening socket is gone). A POST the dead server may have
    # started to handle is never sent twice: its sender gets the 502 and decides.
    retry-on conn-failure empty-response
    retries 3
    option redispatch 1
    # A client that gives up before its answer (a page reloaded during a slow handshake) takes
    # its request with it: without this, HAProxy still delivered a socket's upgrade to a
    # Daphne that was busy or starting, which admitted it long after and replaced the socket
    # the same person had opened since (the fault harness: "replaced" 40 s after a Daphne
    # came back).
    option abortonclose

frontend parley
    bind 127.0.0.1:$CLUSTER_PORT
    option forwardfor
    http-request disable-l7-retry unless METH_GET
    default_backend daphne

backend daphne
    # No stickiness: any Daphne serves any request and any socket (state lives in PostgreSQL
    # and the channel layer), and a dropped socket resumes on whichever server it reaches.
    balance roundrobin
    # /healthz answers 200, or 503 when a dependency is down. Both mean the process is alive
    # and serving: a dependency every Daphne shares (PostgreSQL, Redis) being down must not
    # take out every server at once and turn the product's own answers (a socket's
    # "unavailable", which the page retries) into the balancer's 503 page. A server is taken
    # out when it does not answer at all.
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect rstatus ^(200|503)$
    default-server check inter 2s fastinter 500ms fall 2 rise 2
EOF
  for k in $(seq 1 "$CLUSTER_DAPHNES"); do
    printf '    server daphne-%s 127.0.0.1:%s\n' "$k" $((CLUSTER_PORT + k))
  done
}

# The environment every part of the cluster runs with.
cluster_env() {
  local site_url=http://127.0.0.1:$CLUSTER_PORT
  export SITE_URL=${SITE_URL:-$site_url}
  export ALLOWED_HOSTS=${ALLOWED_HOSTS:-127.0.0.1,localhost}
  export DEBUG=${DEBUG:-0} HTTPS=${HTTPS:-0} STATIC_MANIFEST=${STATIC_MANIFEST:-0}
  export LOCAL_PAYMENTS_ALLOWED=${LOCAL_PAYMENTS_ALLOWED:-1}
  export PARLEY_VAR_DIR=$CLUSTER_DIR/var
  export PYTHONUNBUFFERED=1
  # HAProxy appends the client's address to X-Forwarded-For: one proxy of ours.
  export TRUSTED_PROXY_COUNT=${TRUSTED_PROXY_COUNT:-1}
  if [ -z "${SECRET_KEY:-}" ]; then SECRET_KEY=$(secret secret-key); export SECRET_KEY; fi
  if [ -z "${TURN_SECRET:-}" ]; then TURN_SECRET=$(secret turn-secret); export TURN_SECRET; fi
  export STUN_URLS=stun:127.0.0.1:$CLUSTER_TURN_PORT
  export TURN_URLS="turn:127.0.0.1:$CLUSTER_TURN_PORT?transport=udp"
  local r=$CLUSTER_REDIS_PORT
  export CHANNEL_REDIS_URLS=redis://127.0.0.1:$r/0,redis://127.0.0.1:$((r + 1))/0
  export REDIS_URL=redis://127.0.0.1:$((r + 2))/0
  unset CELERY_BROKER_URL
  if [ -z "${DATABASE_URL:-}" ]; then
    export DATABASE_URL=postgres://parley:parley@127.0.0.1:5432/parley_cluster
  fi
}

# One service, as `start` runs it (also what `revive` starts again).
service_launch() {
  local name=$1 k
  case "$name" in
    redis-channels-1 | redis-channels-2 | redis-broker)
      case "$name" in redis-channels-1) k=0 ;; redis-channels-2) k=1 ;; *) k=2 ;; esac
      launch "$name" redis-server --bind 127.0.0.1 --port $((CLUSTER_REDIS_PORT + k)) --save '' \
        --appendonly no --dir "$CLUSTER_DIR/redis"
      ;;
    coturn)
      : >"$CLUSTER_DIR/turnserver.conf"
      launch coturn turnserver -c "$CLUSTER_DIR/turnserver.conf" --listening-ip=127.0.0.1 \
        --relay-ip=127.0.0.1 --listening-port="$CLUSTER_TURN_PORT" --use-auth-secret \
        --static-auth-secret="$TURN_SECRET" --realm=parley.local --no-tls --no-dtls --no-cli \
        --allow-loopback-peers --min-port="${CLUSTER_TURN_RELAY_PORTS%-*}" \
        --max-port="${CLUSTER_TURN_RELAY_PORTS#*-}" --fingerprint \
        --userdb="$CLUSTER_DIR/turndb" --pidfile="$run_dir/turnserver.pid" --log-file=stdout --simple-log
      ;;
    daphne-*)
      k=${name#daphne-}
      launch "$name" .venv/bin/daphne -b 127.0.0.1 -p $((CLUSTER_PORT + k)) --proxy-headers \
        config.asgi:application
      ;;
    celery-worker-*)
      # Two workers on all three queues: either one can die and rooms still close, payments
      # and emails still go (a deployment may give each queue its own workers instead).
      k=${name#celery-worker-}
      launch "$name" .venv/bin/celery -A config worker -n "worker$k@%h" \
        --concurrency 1 --queues money,rooms,email --loglevel INFO --without-gossip --without-mingle
      ;;
    celery-beat)
      # Beat alone, exactly one per deployment: two would schedule every periodic task twice.
      launch celery-beat .venv/bin/celery -A config beat --loglevel INFO \
        --schedule "$CLUSTER_DIR/var/celery/beat-schedule"
      ;;
    haproxy)
      haproxy_config >"$CLUSTER_DIR/haproxy.cfg"
      "$haproxy_bin" -c -q -f "$CLUSTER_DIR/haproxy.cfg"
      launch haproxy "$haproxy_bin" -db -f "$CLUSTER_DIR/haproxy.cfg"
      ;;
    *) die "No service $name in this cluster (scripts/cluster.sh status lists them)." ;;
  esac
}

# Waits until a launched service serves. A log may hold an earlier run's lines (`revive`),
# so Celery's readiness is looked for in what was written after `$2` bytes.
service_wait() {
  local name=$1 from=${2:-0} k
  case "$name" in
    redis-*)
      case "$name" in redis-channels-1) k=0 ;; redis-channels-2) k=1 ;; *) k=2 ;; esac
      wait_until "Redis on port $((CLUSTER_REDIS_PORT + k))" "$name" \
        redis-cli -p $((CLUSTER_REDIS_PORT + k)) ping
      ;;
    coturn) wait_until coturn coturn port_busy "$CLUSTER_TURN_PORT" ;;
    daphne-*)
      k=${name#daphne-}
      wait_until "Daphne $k" "$name" curl -fsS -o /dev/null "http://127.0.0.1:$((CLUSTER_PORT + k))/healthz"
      ;;
    celery-worker-*) wait_until "Celery worker ${name#celery-worker-}" "$name" log_says "$name" "$from" ' ready\.' ;;
    celery-beat) wait_until "Celery beat" "$name" log_says "$name" "$from" 'beat: Starting' ;;
    haproxy) wait_until HAProxy haproxy curl -fsS -o /dev/null "$SITE_URL/healthz" ;;
  esac
}

log_says() { tail -c +"$(($2 + 1))" "$log_dir/$1.log" | grep -q "$3"; }

find_haproxy() {
  haproxy_bin=$(command -v haproxy || true)
  [ -n "$haproxy_bin" ] || [ ! -x /usr/sbin/haproxy ] || haproxy_bin=/usr/sbin/haproxy
  [ -n "$haproxy_bin" ] || die "HAProxy is not installed: run make install as root (or apt-get install haproxy)."
}

cmd_start() {
  [ -x .venv/bin/daphne ] || die "No .venv here: run make install first."
  find_haproxy
  command -v turnserver >/dev/null || die "coturn is not installed: run scripts/services.sh as root."
  command -v redis-server >/dev/null || die "Redis is not installed: run scripts/services.sh as root."
  local name
  for name in "${SERVICES[@]}"; do
    alive "$name" && die "The cluster in $CLUSTER_DIR is running ($name); scripts/cluster.sh stop first."
  done
  local ports=("$CLUSTER_PORT" "$CLUSTER_TURN_PORT") k port
  for k in 0 1 2; do ports+=($((CLUSTER_REDIS_PORT + k))); done
  for k in $(seq 1 "$CLUSTER_DAPHNES"); do ports+=($((CLUSTER_PORT + k))); done
  for port in "${ports[@]}"; do
    port_busy "$port" && die "Port $port is in use; stop what runs there or choose other ports (CLUSTER_PORT, CLUSTER_REDIS_PORT, CLUSTER_TURN_PORT)."
  done
  mkdir -p "$run_dir" "$log_dir" "$CLUSTER_DIR/redis" "$CLUSTER_DIR/var/celery"
  trap 'echo "scripts/cluster.sh: start failed; stopping what started." >&2; cmd_stop' ERR

  local own_database=0
  [ -n "${DATABASE_URL:-}" ] || own_database=1
  cluster_env

  # --- Redis: two channel-layer shards, one broker/cache; coturn ---------------------------
  for name in redis-channels-1 redis-channels-2 redis-broker coturn; do service_launch "$name"; done
  for name in redis-channels-1 redis-channels-2 redis-broker; do service_wait "$name"; done

  # --- PostgreSQL ------------------------------------------------------------------------------
  if [ $own_database = 1 ]; then
    scripts/services.sh
    if ! PGPASSWORD=parley psql -w -h 127.0.0.1 -U parley -d parley -qtA \
      -c "SELECT 1 FROM pg_database WHERE datname = 'parley_cluster'" | grep -qx 1; then
      say "creating PostgreSQL database parley_cluster"
      PGPASSWORD=parley createdb -w -h 127.0.0.1 -U parley parley_cluster
    fi
    CLUSTER_SEED=${CLUSTER_SEED:-1}
  fi
  if [ "$CLUSTER_MIGRATE" = 1 ]; then .venv/bin/python manage.py migrate --noinput -v 0; fi

  # --- Daphne × N, Celery, HAProxy -------------------------------------------------------------
  for name in "${SERVICES[@]}"; do
    case "$name" in daphne-* | celery-* | haproxy) service_launch "$name" ;; esac
  done
  for name in "${SERVICES[@]}"; do
    case "$name" in redis-*) ;; *) service_wait "$name" ;; esac
  done
  trap - ERR

  if [ "${CLUSTER_SEED:-0}" = 1 ]; then .venv/bin/python manage.py seed_demo; fi
  say "Parley serves on $SITE_URL (HAProxy → ${CLUSTER_DAPHNES} Daphne processes); logs in $log_dir; scripts/cluster.sh stop ends it."
}

# Starts one service that stopped (died, was killed) again, as `start` ran it, and waits until
# it serves: what a supervisor (systemd's Restart=) does in a deployment. The fault harness
# (bench/faults.py) brings back what it kills with it.
cmd_revive() {
  local name=${1:-}
  [ -n "$name" ] || die "Usage: scripts/cluster.sh revive <service> (scripts/cluster.sh status lists them)."
  alive "$name" && die "$name is running (pid $(pid_of "$name"))."
  [ "$name" = haproxy ] && find_haproxy
  cluster_env
  local from=0
  [ -e "$log_dir/$name.log" ] && from=$(stat -c %s "$log_dir/$name.log")
  # Appended to the log: what the earlier process said stays there.
  launch_append=1 service_launch "$name"
  service_wait "$name" "$from"
  say "$name is back (pid $(pid_of "$name"))."
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  revive) cmd_revive "${2:-}" ;;
  *) die "Usage: scripts/cluster.sh start|stop|status|revive <service>" ;;
esac
