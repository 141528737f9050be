#!/usr/bin/env bash
# Local engines and Redis for development, tests and the demo (no Docker needed).
#
#   devstack/stack.sh up      build if needed, start what is not running, wait until ready
#   devstack/stack.sh down    stop everything this script (or `make demo`) started
#   devstack/stack.sh status  one line per service
#   devstack/stack.sh up-cluster    a three-node Elasticsearch 9.5.3 cluster :9210-9212
#   devstack/stack.sh kill-node N   SIGKILL node N of that cluster (fault tests)
#   devstack/stack.sh start-node N  start node N again (it rejoins)
#
# Engines (ENGINES picks; default all four): the primary line of each engine, and the older
# line kept as a compatibility target.
#   elasticsearch   Elasticsearch 9.5.3 with Painless   :9200  (Painless from ../shared/engines/es9-painless)
#   opensearch      OpenSearch 3.5.0 with Painless      :9201
#   elasticsearch8  Elasticsearch 8.19.21, no Painless  :9202  (a cluster with scripts off)
#   opensearch2     OpenSearch 2.19.1 with Painless     :9203
# ENGINE_HEAP (default 1g) sizes each JVM. Build outputs stay in devstack/*/target and Maven's
# ~/.m2 cache, so a second `up` needs no network; data and logs live in .devstack/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${ES_INTEREST_DEVSTACK_DIR:-$ROOT/.devstack}
ENGINES=${ENGINES:-elasticsearch opensearch elasticsearch8 opensearch2}
HEAP=${ENGINE_HEAP:-1g}
READY_TIMEOUT=${READY_TIMEOUT:-180}
# Elasticsearch 9.x and OpenSearch 3.x need Java 21+; the older lines run on the machine's Java 17.
JAVA21_HOME=${JAVA21_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}
PAINLESS_TOOL=${ES_INTEREST_PAINLESS_TOOL:-$ROOT/../shared/engines/es9-painless}
ES9_VERSION=9.5.3
ES8_VERSION=8.19.21
OS3_VERSION=3.5.0
OS2_VERSION=2.19.1
ALL_ENGINES="elasticsearch opensearch elasticsearch8 opensearch2"
mkdir -p "$STATE"

http_port() { case $1 in elasticsearch) echo 9200 ;; opensearch) echo 9201 ;; elasticsearch8) echo 9202 ;; opensearch2) echo 9203 ;; esac; }
transport_port() { case $1 in elasticsearch) echo 9300 ;; opensearch) echo 9301 ;; elasticsearch8) echo 9302 ;; opensearch2) echo 9303 ;; esac; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Rebuild only when the jar is missing or older than the pom or sources.
stale() { [ ! -f "$1" ] || [ -n "$(find "$2/pom.xml" "$2/src" -newer "$1" -type f 2>/dev/null | head -n1)" ]; }

mvn_package() {  # DIR [maven args...]: offline first, so a warm machine needs no network
  local dir=$1; shift
  (cd "$dir" && { mvn -q -B -o "$@" package >/dev/null 2>&1 || mvn -q -B "$@" package; })
}

needs_java21() { [ "$1" = elasticsearch ] || [ "$1" = opensearch ]; }

java_for() {
  if needs_java21 "$1"; then
    [ -x "$JAVA21_HOME/bin/java" ] || { echo "error: $1 needs Java 21+; set JAVA21_HOME (looked in $JAVA21_HOME)" >&2; exit 1; }
    echo "$JAVA21_HOME/bin/java"
  else
    echo java
  fi
}

# Builds a launcher when its jar is missing or stale: NAME DIR JAR [maven args...]
build_launcher() {
  local name=$1 dir=$2 jar=$3; shift 3
  if stale "$jar" "$dir"; then
    echo "building $name launcher (Maven Central artifacts)..." >&2
    mvn_package "$dir" "$@" >&2
  fi
}

# Prints the classpath and main-class arguments of one engine, building what is missing.
engine_command() {
  local name=$1 dir=$ROOT/devstack/elasticsearch target
  case $name in
    opensearch|opensearch2)
      # One launcher project, two lines: 3.x (-Pos3, Java 21+) and 2.19 (the default build).
      dir=$ROOT/devstack/opensearch
      local version=$OS2_VERSION java_home=${JAVA_HOME:-} profile=()
      [ "$name" = opensearch ] && { version=$OS3_VERSION java_home=$JAVA21_HOME profile=(-Pos3); }
      target=$dir/target/$version
      JAVA_HOME=$java_home build_launcher "opensearch $version" "$dir" \
        "$target/devstack-opensearch-1.0.jar" "${profile[@]}"
      echo "-cp $target/devstack-opensearch-1.0.jar:$target/lib/* io.esinterest.devstack.OpenSearchNode $target"
      ;;
    elasticsearch8)
      target=$dir/target/$ES8_VERSION
      build_launcher "elasticsearch $ES8_VERSION" "$dir" "$target/devstack-elasticsearch-1.0.jar"
      echo "-cp $target/devstack-elasticsearch-1.0.jar:$target/lib/* io.esinterest.devstack.ElasticsearchNode $target"
      ;;
    elasticsearch)
      target=$dir/target/$ES9_VERSION
      local painless=$dir/target/es9-painless
      JAVA_HOME=$JAVA21_HOME build_launcher "elasticsearch $ES9_VERSION" "$dir" \
        "$target/devstack-elasticsearch-1.0.jar" -Pes9
      local cp="$target/devstack-elasticsearch-1.0.jar:$target/lib/*"
      if [ ! -f "$painless/painless-port-1.0.jar" ] && [ -x "$PAINLESS_TOOL/build.sh" ]; then
        echo "building Painless for elasticsearch $ES9_VERSION ($PAINLESS_TOOL)..." >&2
        JAVA_HOME=$JAVA21_HOME "$PAINLESS_TOOL/build.sh" "$painless" >"$STATE/painless-build.log" 2>&1 \
          || { tail -n 30 "$STATE/painless-build.log" >&2; exit 1; }
      fi
      if [ -f "$painless/painless-port-1.0.jar" ]; then
        cp+=":$painless/painless-port-1.0.jar"
        # The tool's lib/ repeats the server jars; add only what Painless brings (antlr, asm, spi).
        local jar
        for jar in "$painless"/lib/*.jar; do
          [ -f "$target/lib/$(basename "$jar")" ] || cp+=":$jar"
        done
      else
        echo "warning: $PAINLESS_TOOL is missing: elasticsearch $ES9_VERSION starts without Painless" \
             "(script_score tests are skipped there)" >&2
      fi
      echo "-cp $cp io.esinterest.devstack.ElasticsearchNode $target"
      ;;
  esac
}

# The cluster: three Elasticsearch 9.5.3 nodes (every one master-eligible and a data node),
# one replica of every shard (the product's indices say auto_expand_replicas 0-1).
CLUSTER_NODES=(0 1 2)
cluster_http_port() { echo $((9210 + $1)); }
cluster_transport_port() { echo $((9310 + $1)); }

start_cluster_node() {
  local i=$1 name=es-cluster-$1 pidfile command java
  pidfile=$STATE/$name.pid
  if alive "$pidfile"; then echo "$name already running (pid $(cat "$pidfile"))"; return; fi
  command=$(engine_command elasticsearch)
  java=$(java_for elasticsearch)
  local -a argv extra=()
  read -r -a argv <<<"$command"
  [[ $command == *painless-port* ]] && extra=(lang-painless=org.elasticsearch.painless.PainlessPlugin)
  local seeds="" masters="" n
  for n in "${CLUSTER_NODES[@]}"; do
    seeds+="${seeds:+,}127.0.0.1:$(cluster_transport_port "$n")"
    masters+="${masters:+,}es-cluster-$n"
  done
  mkdir -p "$STATE/$name"
  DEVSTACK_CLUSTER_NAME=es-interest-cluster DEVSTACK_NODE_NAME=$name \
  DEVSTACK_SEED_HOSTS=$seeds DEVSTACK_MASTER_NODES=$masters \
    setsid nohup "$java" -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.io.tmpdir="$STATE/$name" \
    -Dlog4j2.formatMsgNoLookups=true --enable-native-access=ALL-UNNAMED "${argv[@]}" \
    "$STATE/$name" "$(cluster_http_port "$i")" "$(cluster_transport_port "$i")" "${extra[@]}" \
    >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  echo "$name starting on 127.0.0.1:$(cluster_http_port "$i") (log: $STATE/$name.log)"
}

wait_cluster() {  # until every node answers and the cluster holds all three
  local i
  for i in "${CLUSTER_NODES[@]}"; do
    wait_engine "es-cluster-$i" "$(cluster_http_port "$i")" "&wait_for_nodes=${#CLUSTER_NODES[@]}"
  done
}

start_engine() {
  local name=$1 port pidfile command java
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
  command=$(engine_command "$name")
  java=$(java_for "$name")
  local -a argv
  read -r -a argv <<<"$command"
  local extra=() jvm=()
  needs_java21 "$name" && jvm=(--enable-native-access=ALL-UNNAMED)  # Java 21+: Lucene's native code
  [[ $command == *painless-port* ]] && extra=(lang-painless=org.elasticsearch.painless.PainlessPlugin)
  mkdir -p "$STATE/$name"
  # argv: -cp CLASSPATH MAIN INSTALL_DIR; the node takes DATA_DIR HTTP TRANSPORT [plugins] after.
  setsid nohup "$java" -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.io.tmpdir="$STATE/$name" \
    -Dlog4j2.formatMsgNoLookups=true "${jvm[@]}" "${argv[@]}" \
    "$STATE/$name" "$port" "$(transport_port "$name")" "${extra[@]}" \
    >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  echo "$name starting on 127.0.0.1:$port (log: $STATE/$name.log)"
}

wait_engine() {  # NAME [PORT] [MORE HEALTH PARAMETERS]
  local name=$1 port=${2:-$(http_port "$1")} more=${3:-} pidfile start
  pidfile=$STATE/$name.pid
  start=$(date +%s)
  until curl -fs "http://127.0.0.1:$port/_cluster/health?wait_for_status=yellow&timeout=1s$more" >/dev/null 2>&1; do
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
  # openssl: tests/integration/test_broker.py makes a TLS Redis's certificates with it.
  if ! command -v redis-server >/dev/null || ! command -v openssl >/dev/null; then
    echo "installing redis-server and openssl (Debian packages)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server \
      openssl >/dev/null
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
  up-cluster)
    start_redis
    for i in "${CLUSTER_NODES[@]}"; do start_cluster_node "$i"; done
    wait_cluster
    ;;
  kill-node)
    pid=$(cat "$STATE/es-cluster-${2:?node number}.pid")
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    rm -f "$STATE/es-cluster-$2.pid"
    echo "es-cluster-$2 killed"
    ;;
  start-node)
    start_cluster_node "${2:?node number}"
    ;;
  down)
    # Demo processes first (they talk to the services), then engines, then Redis.
    for p in api worker; do stop_pidfile "$p"; done
    for e in $ALL_ENGINES es-cluster-0 es-cluster-1 es-cluster-2; do
      stop_pidfile "$e"
    done
    if alive "$STATE/redis.pid"; then
      redis-cli -p 6379 shutdown >/dev/null 2>&1 || true
      for _ in $(seq 50); do alive "$STATE/redis.pid" || break; sleep 0.1; done
      echo "redis stopped"
    fi
    rm -f "$STATE/redis.pid"
    ;;
  status)
    for s in redis $ALL_ENGINES es-cluster-0 es-cluster-1 es-cluster-2 worker api; do
      if alive "$STATE/$s.pid"; then echo "$s: running (pid $(cat "$STATE/$s.pid"))"; else echo "$s: stopped"; fi
    done
    ;;
  *)
    echo "usage: $0 up|down|status|up-cluster|kill-node N|start-node N" >&2
    exit 2
    ;;
esac
