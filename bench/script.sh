#!/usr/bin/env bash
# What the write script (src/store/redis/scripts.rs, ADD_VISITS) costs Redis per write,
# measured inside Redis (`INFO commandstats`) while redis-benchmark sends it from one
# client: no service and no wrk beside it, so the figure repeats where requests/s does
# not. Beside it, an empty script given the same arguments (the cost of calling a script
# at all) and a script of ten `TIME` calls (the cost of a call from Lua), so that the call
# machinery, the commands' own work and the script's logic can be told apart.
#
#   bench/script.sh                   # a batch of 12 visits of the tutorial's counter
#   VISITS=24 CALLS=50000 ROUNDS=5 bench/script.sh
#
# A benchmark, not a test: it reports numbers and fails only if something does not run.
set -euo pipefail
cd "$(dirname "$0")/.."

VISITS=${VISITS:-12}
CALLS=${CALLS:-20000}
ROUNDS=${ROUNDS:-3}
source bench/common.sh
require_tools redis-server redis-cli redis-benchmark
start_redis

script=$(awk '/^pub const ADD_VISITS: &str = r"$/ {on = 1; next} on && /^";$/ {exit} on' \
  src/store/redis/scripts.rs)
[ -n "$script" ] || { echo "ADD_VISITS not found in src/store/redis/scripts.rs" >&2; exit 1; }

cli() { redis-cli -p "$redis_port" "$@"; }
write_sha=$(cli script load "$script")
empty_sha=$(cli script load "return 1")
calls_sha=$(cli script load "for i = 1, 10 do redis.call('TIME') end return 1")

# One tally of the tutorial's counter with as many distinct visitors as visits, the keys
# and arguments the service sends (see ADD_VISITS); a random batch number per call, so
# that each call is applied, not found in the records and answered from them, and random
# visitors, so that each call adds new ones to the sketch.
today=$(date -u +%F)
cli set hits:dataset bench-mark >/dev/null
keys=(hits:batches:bench hits:replicas hits:counters hits:dataset hits:writes hits hits:days
  "hits:u:$today")
args=(bench 99999999999999 __rand_int__ 64 600000 "$today" 400 4102444800 50000 0 hits bench-mark
  0 another-mark hits "$VISITS" "$VISITS")
for _ in $(seq 1 "$VISITS"); do args+=(__rand_int__); done

# Runs script $1 CALLS times; prints its µs per call and the µs per call of the commands
# it ran (their own work, without the call from Lua).
measure() {
  cli config resetstat >/dev/null
  redis-benchmark -p "$redis_port" -c 1 -n "$CALLS" -r 1000000000 \
    EVALSHA "$1" "${#keys[@]}" "${keys[@]}" "${args[@]}" >/dev/null
  cli info commandstats | tr -d '\r' | awk -F'[:=,]' '
    $1 == "cmdstat_evalsha" { calls = $3; script = $7 }
    $1 != "cmdstat_evalsha" && $1 !~ /config|info/ && $1 ~ /^cmdstat_/ { inner += $5 }
    END { printf "%.2f %.2f\n", script, calls ? inner / calls : 0 }'
}

echo "Redis $(cli info server | tr -d '\r' | awk -F: '$1 == "redis_version" {print $2}'), $CALLS calls a round, one tally of $VISITS visits"
printf '%-6s %-22s %-22s %-20s %s\n' round "write script µs/call" "its commands µs/call" "empty script µs/call" "10 TIME calls µs/call"
for round in $(seq 1 "$ROUNDS"); do
  read -r write inner < <(measure "$write_sha")
  read -r empty _ < <(measure "$empty_sha")
  read -r calls _ < <(measure "$calls_sha")
  printf '%-6s %-22s %-22s %-20s %s\n' "$round" "$write" "$inner" "$empty" "$calls"
done
