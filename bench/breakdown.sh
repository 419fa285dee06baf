#!/usr/bin/env bash
# Where a visit's time goes, under the load of bench/run.sh (wrk -t2 -c64 on `GET /`, the
# dist profile): for each store, the mean of each stage, from the service's histograms
# and Redis's command statistics over one run:
#
# - queue: from the visit joining its worker's queue to its batch's write starting
#   (`stackdemo_visit_queue_seconds`);
# - write: the store write's round trip, script, WAIT and all (`stackdemo_store_write_seconds`);
# - script, WAIT: the write script's and WAIT's own time in Redis (`INFO commandstats`);
# - request: the whole request, from the router's view (`http_request_duration_seconds`);
#   what is not queue or write is the request's own handling and its answer.
#
#   bench/breakdown.sh
#   STORES=redis DURATION=10s bench/breakdown.sh
#
# A benchmark, not a test: it reports numbers and fails only if something does not run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-6s}
STORES=${STORES:-redis sentinel embedded}
source bench/common.sh
require_tools wrk redis-server redis-sentinel redis-cli
build_release
start_redis

# mean NAME: the mean of histogram NAME (route `/` for the request histogram), in µs,
# from the metrics page in $metrics.
mean() {
  awk -v m="$1" '
    $1 ~ "^"m"_sum" && ($1 !~ /route=/ || $1 ~ /route="\/"/) { s += $2 }
    $1 ~ "^"m"_count" && ($1 !~ /route=/ || $1 ~ /route="\/"/) { c += $2 }
    END { printf "%.0f", c ? s / c * 1e6 : 0 }' "$metrics"
}

# redis_usec PORT COMMAND: usec_per_call of COMMAND in Redis on PORT since the reset.
redis_usec() {
  redis-cli -p "$1" info commandstats | tr -d '\r' |
    awk -F'[:,=]' -v c="cmdstat_$2" '$1 == c { print $7; found = 1 } END { if (!found) print "-" }'
}

run_store() {
  local name=$1; shift
  local port; port=$(free_port)
  "$BIN" --listen "127.0.0.1:$port" --log-format json --rate-limit off "$@" >/dev/null 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_ready "$port"
  wrk -t2 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null   # warm-up
  local data_port=${primary_port:-$redis_port}
  redis-cli -p "$data_port" config resetstat >/dev/null
  # Histograms from zero: a fresh service for the measured run.
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "$BIN" --listen "127.0.0.1:$port" --log-format json --rate-limit off "$@" >/dev/null 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_ready "$port"
  local rps
  rps=$(wrk -t2 -c64 -d"$DURATION" "http://127.0.0.1:$port/" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
  metrics="$work/metrics-$name"
  curl -fs "http://127.0.0.1:$port/metrics" >"$metrics"
  local script wait
  if [ "$name" = embedded ]; then script=-; wait=-; else
    script=$(redis_usec "$data_port" evalsha); wait=$(redis_usec "$data_port" wait)
  fi
  printf "%-9s %9s %8s %8s %8s %8s %9s %10s\n" "$name" "$rps" \
    "$(mean stackdemo_visit_queue_seconds)" "$(mean stackdemo_store_write_seconds)" \
    "$script" "$wait" "$(mean http_request_duration_seconds)" \
    "$(awk '$1 == "stackdemo_visit_batch_size_sum" {s=$2} $1 == "stackdemo_visit_batch_size_count" {c=$2} END {printf "%.1f", c ? s/c : 0}' "$metrics")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "wrk -t2 -c64 for $DURATION on GET /, means in µs; on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d)"
printf "%-9s %9s %8s %8s %8s %8s %9s %10s\n" store "visits/s" queue write script WAIT request "per batch"
for store in $STORES; do
  case $store in
    redis) run_store redis --redis-url "redis://127.0.0.1:$redis_port/0" ;;
    embedded) run_store embedded --data-dir "$work/data" ;;
    sentinel)
      plain_redis_port=$redis_port start_sentinel_group 1
      primary_port=$sentinel_primary_port run_store sentinel --redis-sentinels "127.0.0.1:$sentinel_port" --redis-min-replicas 1
      ;;
    *) echo "unknown store $store (redis, sentinel, embedded)" >&2; exit 2 ;;
  esac
done
echo "(queue: waiting for the batch's write to start; write: its round trip; script and WAIT:"
echo " their own time in Redis per call; request: the whole request as the router sees it;"
echo " per batch: visits per store write)"
