#!/usr/bin/env bash
# End-to-end test of the image and the stack on a real single-node Docker Swarm.
#
#   scripts/e2e-stack.sh                 # STACK_NAME=stackdemo-e2e by default
#   STACK_NAME=demo STACK_KEEP=1 scripts/e2e-stack.sh   # leave the stack deployed
#
# Works on a fresh Debian machine as root: installs docker.io and debootstrap when
# missing, starts dockerd when none answers, initialises the swarm when inactive. It
# builds its base images locally (scripts/base-images.sh), for machines that cannot pull
# from a registry.
#
# On hosts without IPVS the routing mesh (localhost:8000) and service virtual IPs do not
# route; the stack is reached through the HAProxy edge (published in host mode on
# EDGE_PORT) and through client containers attached to the overlay network, which works
# with IPVS or without. Every claim is checked and the script stops at the first one that
# does not hold.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${STACK_NAME:-stackdemo-e2e}
KEEP=${STACK_KEEP:-0}
export EDGE_PORT=${EDGE_PORT:-8080}
EDGE=http://127.0.0.1:$EDGE_PORT/
SECRET=${STACK}_redis_password
WORK=$(mktemp -d /var/tmp/stackdemo-e2e.XXXXXX)
source scripts/e2e-lib.sh

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -n "${DOCKER:-}" ]; then
    log "diagnostics:"
    $DOCKER stack ps "$STACK" --no-trunc 2>/dev/null | head -30 || true
    $DOCKER service logs --tail 5 "${STACK}_web" 2>/dev/null | cut -c1-300 || true
  fi
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- the machine ------------------------------------------------------------------------

host_docker_up
if [ "$($DOCKER info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  log "docker swarm init"
  $DOCKER swarm init --advertise-addr 127.0.0.1 >/dev/null
fi

# --- images -----------------------------------------------------------------------------

images_built
size=$($DOCKER image inspect stackdemo:v1 --format '{{.Size}}')
[ "$size" -le $((30 * 1024 * 1024)) ] || fail "image is $size bytes, over 30 MB"
user=$($DOCKER image inspect stackdemo:v1 --format '{{.Config.User}}')
[ "$user" = "10001:10001" ] || fail "image runs as '$user', not the non-root 10001"
note "image size $(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1e6 }') MB ($size bytes), user $user"

# --- deploy -----------------------------------------------------------------------------

# stack_gone: no service (and, with "networks", no network) of the stack left.
stack_gone() {
  local left; left=$($DOCKER service ls -q --filter "label=com.docker.stack.namespace=$STACK")
  [ "${1:-}" = networks ] && left+=$($DOCKER network ls -q --filter "label=com.docker.stack.namespace=$STACK")
  [ -z "$left" ] || { echo "left: $left"; return 1; }
}
if $DOCKER stack ls --format '{{.Name}}' | grep -qx "$STACK"; then
  log "removing the stack left from an earlier run"
  $DOCKER stack rm "$STACK" >/dev/null
  wait_for 90 "the stack left from an earlier run removed" stack_gone networks
fi
secret_created "$SECRET" $DOCKER
export REDIS_PASSWORD_SECRET=$SECRET
export STACKDEMO_IMAGE=stackdemo:v1
# Every visit of these tests comes from this one host: no limit per client.
export STACKDEMO_RATE_LIMIT=off
log "docker stack deploy -c docker-compose.yml -c deploy/edge.yml $STACK"
$DOCKER stack deploy -c docker-compose.yml -c deploy/edge.yml "$STACK" >/dev/null

# healthy SERVICE: how many of its containers are running and healthy.
healthy() {
  $DOCKER ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" \
    --filter health=healthy | wc -l
}
# healthy_at SERVICE N: N containers healthy, and the service at N/N.
healthy_at() {
  local now; now=$($DOCKER service ls --filter "name=${STACK}_$1" --format '{{.Replicas}}')
  if ! { [ "$(healthy "$1")" -eq "$2" ] && [ "$now" = "$2/$2" ]; }; then
    echo "$1 at $now, $(healthy "$1") healthy"
    return 1
  fi
}
# wait_healthy SERVICE N SECONDS: until healthy_at SERVICE N.
wait_healthy() { wait_for "$3" "$1 at $2 healthy replicas" healthy_at "$1" "$2"; }
# verify ARGS...: runs verify against the edge, JSON report on stdout.
verify() { "$VERIFY" verify --url "$EDGE" --json "$@"; }
# edge_spreads N: 60 visits through the edge went to N replicas, none failed.
edge_spreads() {
  verify --requests 60 --concurrency 4 >"$WORK/probe.json" || true
  if ! { [ "$(field "$WORK/probe.json" 'len(r["per_replica"])')" -eq "$1" ] &&
         [ "$(field "$WORK/probe.json" 'r["failed"]')" -eq 0 ]; }; then
    cat "$WORK/probe.json"
    return 1
  fi
}
# wait_replicas N: until edge_spreads N.
wait_replicas() { wait_for 30 "the edge spreading visits over $1 replicas" edge_spreads "$1"; }
# replaced CONTAINER SERVICE N: CONTAINER is gone and the service has N healthy again.
replaced() {
  if $DOCKER ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$2" | grep -q "^$1"; then
    echo "$1 still runs"
    return 1
  fi
  [ "$(healthy "$2")" -ge "$3" ] || { echo "$(healthy "$2") healthy"; return 1; }
}
# replicas_answer N: /api/stats (which counts nothing) answered N times in a row through
# the edge, so every replica's store connection works.
replicas_answer() {
  local i
  for i in $(seq 1 "$1"); do
    curl -fs --max-time 2 "${EDGE}api/stats" >"$WORK/stats.json" || { echo "answer $i failed"; return 1; }
  done
}

started=$SECONDS
wait_healthy redis 1 120
wait_healthy web 3 120
pass "redis 1/1 and web 3/3 healthy after $((SECONDS - started)) s"
wait_replicas 3

# --- counting across replicas -----------------------------------------------------------

verify --requests 600 --concurrency 6 >"$WORK/count.json" || fail "verify: $(cat "$WORK/count.json")"
[ "$(field "$WORK/count.json" 'len(r["per_replica"])')" -eq 3 ] || fail "not every replica served"
[ "$(field "$WORK/count.json" 'r["duplicate_counts"]')" -eq 0 ] || fail "duplicate counts"
pass "600 visits over 3 replicas, no duplicate count: $(field "$WORK/count.json" 'dict(r["per_replica"])')"

# --- named counters through the edge -----------------------------------------------------

# The edge drops what a client says it forwarded for and passes on the address it sees:
# three visits from this host are one unique visitor, whatever they claim. A counter of
# this run's own: the stack's volume keeps counts from run to run.
page="e2e/page-$(date +%s)"
for spoof in 198.51.100.1 198.51.100.2 198.51.100.3; do
  curl -fs --max-time 5 -H "X-Forwarded-For: $spoof" "${EDGE}c/$page" >/dev/null ||
    fail "a visit of /c/$page through the edge failed"
done
today=$(curl -fs --max-time 5 "${EDGE}api/counters/$page" |
  python3 -c 'import json,sys; t=json.load(sys.stdin)["today"]; print(t["visits"], t["unique"])')
[ "$today" = "3 1" ] || fail "/c/$page today: '$today' (visits, unique), not '3 1'"
badge=$(curl -fs --max-time 5 "${EDGE}badge/$page.svg")
case $badge in *"visits: 4"*) ;; *) fail "the badge of $page: $badge" ;; esac
pass "a named counter and its badge through the edge: 4 visits, 1 unique visitor whatever X-Forwarded-For said"

# --- service discovery by name, from a client on the overlay network --------------------

NET=${STACK}_webnet
tasks=$($DOCKER run --rm --network "$NET" "$REDIS_IMAGE" getent ahostsv4 tasks.web | awk '{print $1}' | sort -u | wc -l)
[ "$tasks" -eq 3 ] || fail "tasks.web resolved to $tasks addresses, not 3"
direct=$($DOCKER run --rm --network "$NET" --entrypoint /stackdemo stackdemo:v1 \
  verify --url http://tasks.web:8000/ --requests 30 --concurrency 3 --json)
[ "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["failed"])' "$direct")" -eq 0 ] ||
  fail "a client on $NET could not count through tasks.web: $direct"
noauth=$($DOCKER run --rm --network "$NET" "$REDIS_IMAGE" redis-cli -h redis GET hits 2>&1 || true)
case "$noauth" in *NOAUTH*) ;; *) fail "redis answered without a password: $noauth" ;; esac
pass "tasks.web resolves to 3 tasks, redis resolves by name and requires its password"

# --- high availability: a web container removed under load ------------------------------

# Run directly, not through the function, so that $! is verify itself and TERM reaches it.
"$VERIFY" verify --url "$EDGE" --json --duration 120s --concurrency 4 >"$WORK/ha.json" &
load=$!
sleep 3
victim=$($DOCKER ps -q --filter "label=com.docker.swarm.service.name=${STACK}_web" | head -1)
removed=$SECONDS
$DOCKER rm -f "$victim" >/dev/null
wait_for 90 "the removed replica replaced and healthy" replaced "$victim" web 3
replaced=$((SECONDS - removed))
kill -TERM "$load"
wait "$load" || true
[ "$(field "$WORK/ha.json" 'r["failed"]')" -eq 0 ] || fail "requests failed while a replica was removed: $(cat "$WORK/ha.json")"
[ "$(field "$WORK/ha.json" 'r["duplicate_counts"]')" -eq 0 ] || fail "duplicate counts"
note "replica removed with docker rm -f: replaced and healthy in $replaced s; $(field "$WORK/ha.json" 'r["requests"]') visits meanwhile, 0 failed"

# --- scaling ----------------------------------------------------------------------------

$DOCKER service scale "${STACK}_web=5" >/dev/null
wait_healthy web 5 120
wait_replicas 5
pass "scaled to 5: the edge spreads visits over 5 replicas"
$DOCKER service scale "${STACK}_web=3" >/dev/null
wait_healthy web 3 120
wait_replicas 3
pass "scaled back to 3"

# --- rolling update under load, then rollback -------------------------------------------

"$VERIFY" verify --url "$EDGE" --json --duration 300s --concurrency 4 >"$WORK/update.json" &
load=$!
updating=$SECONDS
$DOCKER service update --quiet --image stackdemo:v2 "${STACK}_web" >/dev/null ||
  fail "docker service update to v2 did not complete"
update_time=$((SECONDS - updating))
kill -TERM "$load"
wait "$load" || true
failed=$(field "$WORK/update.json" 'r["failed"]')
[ "$failed" -eq 0 ] || fail "$failed requests failed during the rolling update: $(cat "$WORK/update.json")"
[ "$(field "$WORK/update.json" 'r["duplicate_counts"]')" -eq 0 ] || fail "duplicate counts during the update"
wait_healthy web 3 60
verify --requests 120 --concurrency 4 >"$WORK/v2.json"
[ "$(field "$WORK/v2.json" '",".join(r["per_version"])')" = v2 ] || fail "not every replica is v2: $(cat "$WORK/v2.json")"
note "rolling update v1 -> v2 took $update_time s; $(field "$WORK/update.json" 'r["requests"]') visits meanwhile, $failed failed, versions seen $(field "$WORK/update.json" 'dict(r["per_version"])')"

$DOCKER service rollback --quiet "${STACK}_web" >/dev/null || fail "docker service rollback did not complete"
wait_healthy web 3 120
verify --requests 120 --concurrency 4 >"$WORK/v1.json"
[ "$(field "$WORK/v1.json" '",".join(r["per_version"])')" = v1 ] || fail "rollback left versions $(cat "$WORK/v1.json")"
pass "rollback: every replica serves v1 again"

# --- Redis killed: Swarm restarts it, the count carries on ------------------------------

verify --requests 1 --concurrency 1 >"$WORK/before.json"
before=$(field "$WORK/before.json" 'r["highest_count"]')
redis_old=$($DOCKER ps -q --filter "label=com.docker.swarm.service.name=${STACK}_redis")
killed=$SECONDS
$DOCKER kill --signal KILL "$redis_old" >/dev/null
wait_for 120 "redis restarted and healthy" replaced "$redis_old" redis 1
# Every replica reconnected: /api/stats answers on three rounds of the edge's round robin.
wait_for 120 "the replicas reaching the restarted redis" replicas_answer 9
redis_back=$((SECONDS - killed))
kept=$(field "$WORK/stats.json" 'r["total"]')
[ "$kept" -eq "$before" ] || fail "redis holds $kept after the kill, the last acknowledged visit was $before"
verify --requests 1 --concurrency 1 >"$WORK/after.json"
after=$(field "$WORK/after.json" 'r["highest_count"]')
[ "$after" -eq $((before + 1)) ] || fail "count went from $before to $after across the Redis kill"
note "redis killed with SIGKILL: serving again after $redis_back s; count went on from $before to $after"

# --- logs -------------------------------------------------------------------------------

# `docker service logs` without --follow sometimes keeps waiting on the log stream of a
# task that is gone after printing everything; what it printed by then is what counts.
timeout 30 $DOCKER service logs --raw --tail 40 "${STACK}_web" >"$WORK/logs.txt" 2>/dev/null || true
python3 - "$WORK/logs.txt" <<'PY' || fail "docker service logs lines are not all JSON"
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
assert lines, "no log lines"
for line in lines:
    event = json.loads(line)
    assert "message" in event and "level" in event, line
print(f"{len(lines)} lines, all JSON")
PY
pass "docker service logs: one JSON object per line"

# --- cleanup ----------------------------------------------------------------------------

if [ "$KEEP" = 1 ]; then
  log "STACK_KEEP=1: leaving $STACK deployed (edge on $EDGE)"
else
  $DOCKER stack rm "$STACK" >/dev/null
  wait_for 90 "docker stack rm removing every service and network" stack_gone networks
  pass "docker stack rm left no service or network of $STACK"
fi

print_summary
echo "e2e-stack: 1 passed, 0 failed"
