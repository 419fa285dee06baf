#!/usr/bin/env bash
# Memory per counter: makes COUNTERS named counters (100 000 unless given), each with one
# visit, through the service (the dist profile), first with Redis, then with the embedded
# store, and prints what they take: Redis's used_memory grown per counter, and the
# embedded store's file and the service's peak resident memory per counter.
#
#   bench/counters.sh
#   COUNTERS=20000 bench/counters.sh
#
# A benchmark, not a test: it reports numbers and fails only if something does not run.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNTERS=${COUNTERS:-100000}
THREADS=2
export THREADS
source bench/common.sh
require_tools wrk redis-server redis-cli
build_release
start_redis

# The service's count of visits so far (each visit here is a new counter's first).
visits() {
  curl -fs "http://127.0.0.1:$1/metrics" | awk '$1 == "stackdemo_visits_total" {printf "%d", $2}'
}

# make_counters PORT: visits /c/many-1, /c/many-2, … until COUNTERS were counted.
make_counters() {
  wrk -t"$THREADS" -c32 -d600s -s bench/sequence.lua "http://127.0.0.1:$1/" >/dev/null &
  local load=$!
  until [ "$(visits "$1")" -ge "$COUNTERS" ]; do sleep 0.5; done
  kill "$load"; wait "$load" 2>/dev/null || true
}

start_service() {
  local port=$1; shift
  "$BIN" --listen "127.0.0.1:$port" --log-format json --rate-limit off \
    --max-counters $((COUNTERS * 2)) "$@" >/dev/null 2>&1 &
  pids+=($!)
  service_pid=$!
  wait_ready "$port"
}

echo "$COUNTERS counters of one visit each; on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d)"

port=$(free_port)
start_service "$port" --redis-url "redis://127.0.0.1:$redis_port/0"
before=$(redis-cli -p "$redis_port" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}')
make_counters "$port"
after=$(redis-cli -p "$redis_port" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}')
made=$(redis-cli -p "$redis_port" hlen hits:counters)
keys=$(redis-cli -p "$redis_port" dbsize)
awk -v b="$before" -v a="$after" -v n="$made" -v k="$keys" 'BEGIN {
  printf "redis:    %d counters, %d keys, used_memory %.1f MB more: %.0f bytes per counter\n", n, k, (a - b) / 1e6, (a - b) / n }'
kill "$service_pid"; wait "$service_pid" 2>/dev/null || true

port=$(free_port)
start_service "$port" --data-dir "$work/data"
make_counters "$port"
made=$(visits "$port")
file=$(stat -c %s "$work/data/stackdemo.redb")
rss=$(awk '/VmHWM/ {print $2}' "/proc/$service_pid/status")
awk -v f="$file" -v r="$rss" -v n="$made" 'BEGIN {
  printf "embedded: %d counters, file %.1f MB: %.0f bytes per counter; service peak RSS %.1f MB\n", n, f / 1e6, f / n, r / 1024 }'
kill "$service_pid"; wait "$service_pid" 2>/dev/null || true
