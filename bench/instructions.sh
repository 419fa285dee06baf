#!/usr/bin/env bash
# Instructions per request: `GET /` (counts a visit) against `GET /healthz` (touches no
# store) of the same release binary, with Redis and with the embedded store, counted by
# valgrind's callgrind while wrk drives the service on loopback.
#
#   bench/instructions.sh                  # 5 s per path, 64 connections
#   DURATION=10s STORES=redis bench/instructions.sh
#
# Requests per second on a small shared machine move by ±10 % from run to run; the
# instructions a request executes hardly move (the same binary repeats its figures to
# within about 1 %), so this is the measure to compare two builds or code
# changes with. Instructions are not time: system calls, cache misses, waking threads and
# the CPU that Redis and wrk take from the same cores do not show here, so `bench/run.sh`
# remains the measure of the throughput target. Under valgrind the service runs dozens of
# times slower, one thread at a time, so the embedded store's transactions carry fewer
# visits than at full speed; the script prints how many visits one store write carried.
#
# Counts the service's own instructions only (not the kernel's, not Redis's, not wrk's).
# A benchmark, not a test: it reports numbers and fails only if something does not run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
STORES=${STORES:-redis embedded}
CONNECTIONS=${CONNECTIONS:-64}
source bench/common.sh
require_tools wrk redis-server valgrind callgrind_control
build_release
start_redis

# Counts the instructions the service executes while wrk requests one path; prints
# "instructions_per_request".
count() {
  local pid=$1 port=$2 path=$3 out dump
  callgrind_control --zero "$pid" >/dev/null 2>&1
  callgrind_control --instr=on "$pid" >/dev/null 2>&1
  out=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$port$path")
  callgrind_control --instr=off "$pid" >/dev/null 2>&1
  callgrind_control --dump=measured "$pid" >/dev/null 2>&1
  # The newest dump (callgrind names them after the process and a running number).
  dump=$(find "$work" -maxdepth 1 -name 'callgrind.out.*' -printf '%T@ %p\n' 2>/dev/null |
    sort -rn | head -1 | cut -d' ' -f2-) || true
  [ -n "$dump" ] || { echo "callgrind wrote no dump for $path" >&2; exit 1; }
  awk -v n="$(awk '/requests in/ {print $1}' <<<"$out")" '/^totals:/ {printf "%.0f", $2 / n}' "$dump"
}

run_store() {
  local name=$1; shift
  local port; port=$(free_port)
  RUST_LOG=${RUST_LOG:-info} valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/callgrind.out" \
    "$BIN" --listen "127.0.0.1:$port" --log-format json "$@" >/dev/null 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_ready "$port" 60   # valgrind starts slowly
  # Warm-up, not counted: connections, buffers, the allocator's caches.
  wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
  wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/healthz" >/dev/null
  local writes_before noop visit
  writes_before=$(store_writes "$port" "$name")
  noop=$(count "$pid" "$port" /healthz)
  visit=$(count "$pid" "$port" /)
  local per_write; per_write=$(visits_per_write "$writes_before" "$(store_writes "$port" "$name")")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v n="$name" -v a="$noop" -v b="$visit" -v w="$per_write" \
    'BEGIN { printf "%-9s %14d %14d %7.2f %12s\n", n, a, b, a/b, w }'
}

echo "callgrind, wrk -t1 -c$CONNECTIONS, $DURATION per path; $(uname -m), $(date -u +%Y-%m-%d)"
printf "%-9s %14s %14s %7s %12s\n" store "healthz instr" "visit instr" ratio "visits/write"
run_stores
echo "(instructions the service executed per request; ratio = healthz / visit, the"
echo " instruction-count counterpart of bench/run.sh's ratio; visits/write as in bench/run.sh)"
