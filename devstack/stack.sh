#!/usr/bin/env bash
# Local engines and Redis for development, tests and the demo (no Docker needed).
#
#   devstack/stack.sh up      build if needed, start what is not running, wait until ready
#   devstack/stack.sh down    stop everything this script (or `make demo`) started
#   devstack/stack.sh status  one line per service
#
# ENGINES (default "elasticsearch opensearch") picks the engines; ENGINE_HEAP (default 1g) sizes
# each JVM. Build outputs stay in devstack/*/target and Maven's ~/.m2 cache, so a second `up`
# needs no network; data and logs live in .devstack/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${ES_INTEREST_DEVSTACK_DIR:-$ROOT/.devstack}
ENGINES=${ENGINES:-elasticsearch opensearch}
HEAP=${ENGINE_HEAP:-1g}
READY_TIMEOUT=${READY_TIMEOUT:-180}
mkdir -p "$STATE"

http_port() { case $1 in elasticsearch) echo 9200 ;; opensearch) echo 9201 ;; esac; }
transport_port() { case $1 in elasticsearch) echo 9300 ;; opensearch) echo 9301 ;; esac; }
main_class() { case $1 in elasticsearch) echo io.esinterest.devstack.ElasticsearchNode ;; opensearch) echo io.esinterest.devstack.OpenSearchNode ;; esac; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

build_engine() {
  local dir=$ROOT/devstack/$1
  local jar=$dir/target/devstack-$1-1.0.jar
  # Rebuild only when the jar is missing or older than the pom or sources.
  if [ -f "$jar" ] && [ -z "$(find "$dir/pom.xml" "$dir/src" -newer "$jar" -type f 2>/dev/null | head -n1)" ]; then
    return
  fi
  echo "building $1 launcher (Maven Central artifacts)..."
  (cd "$dir" && { mvn -q -B -o package >/dev/null 2>&1 || mvn -q -B package; })
}

start_engine() {
  local name=$1 port pidfile
  port=$(http_port "$name")
  pidfile=$STATE/$name.pid
  if alive "$pidfile"; then
    echo "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  if curl -fs "http://127.0.0.1:$port" >/dev/null 2>&1; then
    echo "error: port $port answers but not by a node this script started; stop it first" >&2
    exit 1
  fi
  build_engine "$name"
  local dir=$ROOT/devstack/$name
  mkdir -p "$STATE/$name"
  setsid nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.io.tmpdir="$STATE/$name" \
    -Dlog4j2.formatMsgNoLookups=true \
    -cp "$dir/target/devstack-$name-1.0.jar:$dir/target/lib/*" "$(main_class "$name")" \
    "$dir/target" "$STATE/$name" "$port" "$(transport_port "$name")" \
    >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  echo "$name starting on 127.0.0.1:$port (log: $STATE/$name.log)"
}

wait_engine() {
  local name=$1 port pidfile start
  port=$(http_port "$name")
  pidfile=$STATE/$name.pid
  start=$(date +%s)
  until curl -fs "http://127.0.0.1:$port/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; do
    if ! alive "$pidfile"; then
      echo "error: $name exited during start; last lines of its log:" >&2
      tail -n 30 "$STATE/$name.log" >&2
      exit 1
    fi
    if [ $(($(date +%s) - start)) -ge "$READY_TIMEOUT" ]; then
      echo "error: $name not ready after ${READY_TIMEOUT}s (log: $STATE/$name.log)" >&2
      exit 1
    fi
    sleep 1
  done
  echo "$name ready on 127.0.0.1:$port after $(($(date +%s) - start))s"
}

start_redis() {
  local pidfile=$STATE/redis.pid
  if alive "$pidfile"; then
    echo "redis already running (pid $(cat "$pidfile"))"
    return
  fi
  if ! command -v redis-server >/dev/null; then
    echo "installing redis-server (Debian package)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  mkdir -p "$STATE/redis"
  # Append-only persistence, so queued work survives a restart.
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --dir "$STATE/redis" \
    --appendonly yes --pidfile "$pidfile" --logfile "$STATE/redis.log" --save ""
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "redis ready on 127.0.0.1:6379"
}

stop_pidfile() {
  local name=$1 pidfile=$STATE/$1.pid
  if alive "$pidfile"; then
    local pid
    pid=$(cat "$pidfile")
    # Engines and workers run in their own session: signal the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    echo "$name stopped"
  fi
  rm -f "$pidfile"
}

case ${1:-} in
  up)
    start_redis
    for e in $ENGINES; do start_engine "$e"; done
    for e in $ENGINES; do wait_engine "$e"; done
    ;;
  down)
    # Demo processes first (they talk to the services), then engines, then Redis.
    for p in api worker; do stop_pidfile "$p"; done
    for e in elasticsearch opensearch; do stop_pidfile "$e"; done
    if alive "$STATE/redis.pid"; then
      redis-cli -p 6379 shutdown >/dev/null 2>&1 || true
      for _ in $(seq 50); do alive "$STATE/redis.pid" || break; sleep 0.1; done
      echo "redis stopped"
    fi
    rm -f "$STATE/redis.pid"
    ;;
  status)
    for s in redis elasticsearch opensearch worker api; do
      if alive "$STATE/$s.pid"; then echo "$s: running (pid $(cat "$STATE/$s.pid"))"; else echo "$s: stopped"; fi
    done
    ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
