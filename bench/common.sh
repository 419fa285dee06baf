# shellcheck shell=bash
# Shared by the benchmarks (sourced, not run): checking tools, building the binary, a
# scratch folder cleaned up on exit, a Redis to measure against, and the service's own
# figure of visits per store write.

# The `dist` profile (fat LTO, one codegen unit), as the image is built.
BIN=${BIN:-target/dist/stackdemo}

# Exits with an install hint unless every program named is on PATH.
require_tools() {
  local tool package
  for tool in "$@"; do
    package=$tool
    [ "$tool" = callgrind_control ] && package=valgrind
    case $tool in redis-cli | redis-benchmark) package=redis-tools ;; esac
    command -v "$tool" >/dev/null || { echo "bench needs $tool: apt-get install -y $package" >&2; exit 1; }
  done
}

# Builds the binary with the dist profile unless BIN_PREBUILT is set (then BIN is used as
# it is).
build_release() {
  [ -n "${BIN_PREBUILT:-}" ] || cargo build --profile dist --locked --quiet
}

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until the service on port $1 answers /readyz, polling every 50 ms for at most
# $2 seconds (default 10).
wait_ready() {
  local tries=$(( ${2:-10} * 20 ))
  for _ in $(seq 1 "$tries"); do
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "service on $1 not ready" >&2
  exit 1
}

# Waits until the Redis (or sentinel) on port $1 answers PING.
redis_answers() {
  for _ in $(seq 1 100); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "nothing answered on port $1" >&2
  exit 1
}

# Starts redis-server on a free port (appendonly, fsync every second) and sets redis_port;
# the arguments are passed on. Its folder is $work/redis-PORT.
start_redis() {
  redis_port=$(free_port)
  mkdir -p "$work/redis-$redis_port"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis-$redis_port" \
    --save "" --appendonly yes --appendfsync everysec "$@" >/dev/null 2>&1 &
  pids+=($!)
  redis_answers "$redis_port"
}

# A second Redis group for the `sentinel` stores: a primary, $1 replicas of it (1 unless
# given), and one redis-sentinel watching them; sets sentinel_port, and
# sentinel_primary_port for the scripts that read the primary's statistics. Started only when
# such a store is measured.
start_sentinel_group() {
  local replicas=${1:-1} replica
  start_redis --min-replicas-to-write 1
  local primary=$redis_port
  # shellcheck disable=SC2034 # read by the scripts that source this file
  sentinel_primary_port=$primary
  for _ in $(seq 1 "$replicas"); do
    start_redis --replicaof 127.0.0.1 "$primary"
    replica=$redis_port
  done
  redis_port=${plain_redis_port:-$redis_port}
  sentinel_port=$(free_port)
  mkdir -p "$work/sentinel"
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %s 1\n' \
    "$sentinel_port" "$work/sentinel" "$primary" >"$work/sentinel/sentinel.conf"
  redis-sentinel "$work/sentinel/sentinel.conf" >/dev/null 2>&1 &
  pids+=($!)
  redis_answers "$sentinel_port"
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$primary" info replication | tr -d '\r' | awk -F: '$1 == "connected_slaves" {print $2}')" = "$replicas" ] &&
      [ "$(redis-cli -p "$replica" info replication | tr -d '\r' | awk -F: '$1 == "master_link_status" {print $2}')" = up ] &&
      return 0
    sleep 0.05
  done
  echo "the replicas did not sync" >&2
  exit 1
}

# Prints "visits writes" counted so far by the service on port $1 with store $2: writes
# are Redis commands, or transactions of the embedded store.
store_writes() {
  local metric=stackdemo_visit_batch_size
  [ "$2" = embedded ] && metric=stackdemo_embedded_commit_visits
  curl -fs "http://127.0.0.1:$1/metrics" |
    awk -v m="$metric" '$1==m"_sum" {s=$2} $1==m"_count" {c=$2} END {printf "%d %d", s, c}'
}

# Visits per write between two `store_writes` readings.
visits_per_write() {
  awk -v a="$1" -v b="$2" \
    'BEGIN { split(a, x); split(b, y); c = y[2] - x[2]; printf "%.1f", c ? (y[1] - x[1]) / c : 0 }'
}

# each_log COMMAND...: runs it once per logging setting in $LOGGING, as ROW_LOG.
each_log() {
  local log
  for log in ${LOGGING:-info warn}; do
    ROW_LOG=$log "$@"
  done
}

# Calls the benchmark's own `run_store NAME ARGS...` for each store in $STORES, with the
# arguments that select that store: `redis` (one Redis), `embedded`, `sentinel` (a primary
# and a replica found through a sentinel, each visit waiting for the replica), and
# `sentinel2` (the same with two replicas: each visit waits for both, as the failover rule
# asks); and, with one Redis, `badge` (badge visits to one counter) and `names` (visits
# spread over 10 000 counters, bench/zipf.lua). VISIT_PATH and VISIT_SCRIPT tell
# `run_store` what a visit is.
# Each row is measured once per logging setting in $LOGGING (`info`, the default, and
# `warn`: no line per request), as ROW_LOG.
run_stores() {
  local store
  for store in $STORES; do
    case $store in
      redis) each_log run_store redis --redis-url "redis://127.0.0.1:$redis_port/0" ;;
      embedded) each_log run_store embedded --data-dir "$work/data" ;;
      sentinel)
        plain_redis_port=$redis_port start_sentinel_group 1
        each_log run_store sentinel --redis-sentinels "127.0.0.1:$sentinel_port" --redis-min-replicas 1
        ;;
      sentinel2)
        plain_redis_port=$redis_port start_sentinel_group 2
        each_log run_store sentinel2 --redis-sentinels "127.0.0.1:$sentinel_port" --redis-min-replicas 1
        ;;
      badge) VISIT_PATH=/badge/bench.svg each_log run_store badge --redis-url "redis://127.0.0.1:$redis_port/0" ;;
      names) VISIT_SCRIPT=bench/zipf.lua each_log run_store names --redis-url "redis://127.0.0.1:$redis_port/0" ;;
      *) echo "unknown row $store (redis, embedded, sentinel, sentinel2, badge, names)" >&2; exit 2 ;;
    esac
  done
}
