#!/usr/bin/env bash
# Throughput benchmark: `GET /` (counts a visit) against `GET /healthz` (touches no store)
# of the same binary (the dist profile), with one Redis, with the embedded store, and with
# a primary and one or two replicas found through Sentinel (each visit waiting for them),
# measured side by side with wrk on loopback; then, with one Redis, badge visits to one
# counter (`badge`) and visits spread over 10 000 named counters by a Zipf law (`names`,
# bench/zipf.lua). Prints requests/s, the ratio, p99 latency, peak RSS, and what a
# request costs the whole machine in CPU time.
#
#   bench/run.sh                      # 10 rounds of 2 s per path, 64 connections, 2 threads
#   ROUNDS=20 DURATION=3s bench/run.sh
#   STORES=redis bench/run.sh         # some rows only (redis, embedded, sentinel, sentinel2,
#                                     # badge, names)
#
# The two paths are measured in alternating short rounds, and the ratio is the median of
# the rounds' ratios (each visit round against the no-op round just before it), printed
# with the lowest and highest: a slow spell of a shared machine, which lasts seconds,
# then slows both sides of a pair instead of deciding the ratio.
#
# A benchmark, not a test: it reports numbers and fails only if something does not run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-2s}
ROUNDS=${ROUNDS:-10}
STORES=${STORES:-redis embedded sentinel sentinel2 badge names}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
source bench/common.sh
require_tools wrk redis-server redis-sentinel
build_release

# Milliseconds from starting the binary to the first 200 from /readyz, polled every 5 ms
# for at most 10 s.
startup_ms() {
  local port; port=$(free_port)
  local dir; dir=$(mktemp -d "$work/startup.XXXX")
  local start; start=$(date +%s%N)
  "$BIN" --listen "127.0.0.1:$port" --data-dir "$dir" --log-format json >/dev/null 2>&1 &
  local pid=$! tries=2000
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || { echo "the service on $port was not ready within 10 s" >&2; exit 1; }
    sleep 0.005
  done
  local end; end=$(date +%s%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo $(((end - start) / 1000000))
}

start_redis

# CPU time (clock ticks, user and system) the processes $@ have used so far, summed; a
# process that has ended counts 0.
process_ticks() {
  local p sum=0 ticks
  for p in "$@"; do
    ticks=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || ticks=0
    sum=$((sum + ticks))
  done
  echo "$sum"
}

# The Redis processes this script started (servers and sentinels), with the service
# on $1 left out.
store_pids() {
  local p
  for p in "${pids[@]}"; do
    [ "$p" = "$1" ] || echo "$p"
  done
}

# Runs wrk on the service $4 listening on port $1, on a path (with the wrk script $3, if
# given); prints "requests_per_s p99_ms cpu_us_per_request idle_percent service_us
# redis_us". The CPU figures come from /proc over the run: the whole machine's CPU time
# per request (the service, wrk, Redis and the kernel's work for them together), the share
# of the time the CPUs had nothing to run (idle or waiting for the disk; steal time,
# taken by the host, counts as neither), and of the whole, the service process's part and
# the Redis processes' (servers and sentinels).
measure() {
  local before after out
  local -a stores
  mapfile -t stores < <(store_pids "$4")
  local service_before store_before
  service_before=$(process_ticks "$4"); store_before=$(process_ticks "${stores[@]}")
  before=$(head -1 /proc/stat)
  local with_script=()
  [ -z "${3:-}" ] || with_script=(-s "$3")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "${with_script[@]}" "http://127.0.0.1:$1$2")
  after=$(head -1 /proc/stat)
  local service_ticks store_ticks
  service_ticks=$(( $(process_ticks "$4") - service_before ))
  store_ticks=$(( $(process_ticks "${stores[@]}") - store_before ))
  local rps p99 requests
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/ requests in / {print $1}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
  local errors
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errors" ] || echo "  wrk reported: $errors" >&2
  local cpu
  # Fields after "cpu": user nice system idle iowait irq softirq steal, in clock ticks.
  cpu=$(awk -v a="$before" -v b="$after" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
    -v svc="$service_ticks" -v st="$store_ticks" 'BEGIN {
    split(a, x); split(b, y); for (i = 2; i <= 9; i++) d[i] = y[i] - x[i]
    busy = d[2] + d[3] + d[4] + d[7] + d[8]; idle = d[5] + d[6]; per = 1e6 / hz / n
    printf "%.1f %.1f %.1f %.1f", busy * per, 100 * idle / (busy + idle), svc * per, st * per }')
  echo "$rps $p99 $cpu"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# `run_store NAME ARGS...`: one row, visits at $VISIT_PATH (default `/`) with the wrk
# script $VISIT_SCRIPT (none by default). Every client is one address here: the rate limit
# is off.
run_store() {
  local name=$1; shift
  local path=${VISIT_PATH:-/} script=${VISIT_SCRIPT:-}
  local port; port=$(free_port)
  RUST_LOG=${ROW_LOG:-info} "$BIN" --listen "127.0.0.1:$port" --log-format json --rate-limit off "$@" >/dev/null 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_ready "$port"
  local warm=()
  [ -z "$script" ] || warm=(-s "$script")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${warm[@]}" "http://127.0.0.1:$port$path" >/dev/null   # warm-up
  local writes_before; writes_before=$(store_writes "$port" "$name")
  local noop=() visit=() noop_p=() visit_p=() ratios=() rps p99 cpu idle base
  local noop_cpu=() visit_cpu=() visit_idle=() noop_svc=() visit_svc=() visit_store=() svc store
  for _ in $(seq 1 "$ROUNDS"); do
    read -r rps p99 cpu idle svc store < <(measure "$port" /healthz "" "$pid")
    noop+=("$rps"); noop_p+=("$p99"); noop_cpu+=("$cpu"); noop_svc+=("$svc"); base=$rps
    read -r rps p99 cpu idle svc store < <(measure "$port" "$path" "$script" "$pid")
    visit+=("$rps"); visit_p+=("$p99"); visit_cpu+=("$cpu"); visit_idle+=("$idle")
    visit_svc+=("$svc"); visit_store+=("$store")
    ratios+=("$(awk -v a="$base" -v b="$rps" 'BEGIN { printf "%.4f", b / a }')")
  done
  local noop_rps visit_rps noop_p99 visit_p99 ratio spread
  noop_rps=$(median "${noop[@]}"); visit_rps=$(median "${visit[@]}")
  noop_p99=$(median "${noop_p[@]}"); visit_p99=$(median "${visit_p[@]}")
  ratio=$(median "${ratios[@]}")
  local noop_us visit_us idle_pct
  noop_us=$(median "${noop_cpu[@]}"); visit_us=$(median "${visit_cpu[@]}")
  idle_pct=$(median "${visit_idle[@]}")
  local noop_svc_us visit_svc_us visit_store_us
  noop_svc_us=$(median "${noop_svc[@]}"); visit_svc_us=$(median "${visit_svc[@]}")
  visit_store_us=$(median "${visit_store[@]}")
  spread=$(printf '%s\n' "${ratios[@]}" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}')
  local rss_kb; rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  # Visits per store write during the rounds, from the service's own histograms.
  local per_write; per_write=$(visits_per_write "$writes_before" "$(store_writes "$port" "$name")")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v n="$name" -v a="$noop_rps" -v b="$visit_rps" -v q="$ratio" -v s="$spread" -v pa="$noop_p99" -v pb="$visit_p99" -v r="$rss_kb" -v w="$per_write" \
    -v ca="$noop_us" -v cb="$visit_us" -v i="$idle_pct" \
    -v sa="$noop_svc_us" -v sb="$visit_svc_us" -v rb="$visit_store_us" -v l="${ROW_LOG:-info}" \
    'BEGIN { printf "%-9s %-4s %12.0f %12.0f %7.2f %11s %12.2f %12.2f %9.1f %12s %11.1f %11.1f %7.0f %11.1f %11.1f %11.1f\n", n, l, a, b, q, s, pa, pb, r/1024, w, ca, cb, i, sa, sb, rb }'
}

echo "wrk -t$THREADS -c$CONNECTIONS, $ROUNDS rounds of $DURATION per path, medians; on $(nproc) cores ($(uname -m)), $(date -u +%Y-%m-%d)"
printf "%-9s %-4s %12s %12s %7s %11s %12s %12s %9s %12s %11s %11s %7s %11s %11s %11s\n" store log "healthz/s" "visit/s" ratio "lowest-high" "healthz p99" "visit p99" "RSS MB" "visits/write" "healthz CPU" "visit CPU" "idle %" "healthz svc" "visit svc" "visit Redis"
run_stores
echo "(log: RUST_LOG of the row, info (the default: a line per request) or warn (none);"
echo " requests/s and p99 (ms) are medians over the rounds; ratio is the median of the rounds'"
echo " visit/healthz ratios, followed by the lowest and highest; RSS is the peak resident set"
echo " of the service process; visits/write is the mean number of visits per Redis command or"
echo " per embedded-store transaction; healthz CPU and visit CPU are the CPU time (µs) of the"
echo " whole machine per request, service, wrk and Redis together; idle % is the share of the"
echo " time the CPUs had nothing to run during the visit rounds; healthz svc and visit svc are"
echo " the service process's part of that CPU time per request, visit Redis the Redis servers'"
echo " and sentinels' part per visit)"
echo "start to ready, embedded store: $(startup_ms) ms, $(startup_ms) ms, $(startup_ms) ms"
