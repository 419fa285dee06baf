#!/usr/bin/env bash
# End-to-end test of the stack on a real Docker Swarm of three nodes (scripts/cluster.sh),
# deployed the way a user deploys on several hosts: the image built once, pushed to a
# registry, and pulled by every node. Then nodes are broken under load.
#
#   scripts/e2e-cluster.sh               # STACK_NAME=stackdemo by default
#   STACK_KEEP=1 scripts/e2e-cluster.sh  # leave the cluster and the last stack up
#
# Checks, failing loudly at the first claim that does not hold: placement (redis and the
# edge on the manager, web spread one per node); counting across hosts; the overlay
# carrying traffic between hosts; a worker killed, cut off and drained under load; Redis
# gone for 30 s; a rolling update and a rollback across the nodes; then the Redis HA
# variant (deploy/redis-ha.yml) with the node holding the primary killed under load; and
# that `docker stack rm` and `cluster.sh down` leave nothing behind. Prints a summary of
# what it measured.
#
# On hosts without IPVS, services are reached through the HAProxy edge, published in host
# mode on the manager, as on such hosts users would.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${STACK_NAME:-stackdemo}
KEEP=${STACK_KEEP:-0}
E2E_NAME=e2e-cluster
WORK=$(mktemp -d /var/tmp/stackdemo-cluster.XXXXXX)
source scripts/e2e-lib.sh
CLUSTER=scripts/cluster.sh

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -S /run/stackdemo-cluster/node1/docker.sock ]; then
    log "diagnostics:"
    on node1 node ls 2>/dev/null || true
    on node1 stack ps "$STACK" --no-trunc 2>/dev/null | head -40 || true
    timeout 20 $DOCKER -H unix:///run/stackdemo-cluster/node1/docker.sock service logs --tail 3 "${STACK}_web" 2>/dev/null | cut -c1-300 || true
    # The edge's last requests (HAProxy's log: the server each went to, and how it ended),
    # and with the HA variant, what the servers and the sentinels did last.
    for service in edge redis redis-b redis-c sentinel; do
      timeout 20 $DOCKER -H unix:///run/stackdemo-cluster/node1/docker.sock service logs --tail 60 "${STACK}_$service" 2>/dev/null | cut -c1-300 || true
    done
  fi
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  if [ "$KEEP" != 1 ]; then
    "$CLUSTER" down >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- the cluster and the images ---------------------------------------------------------

host_docker_up
images_built
"$CLUSTER" down >/dev/null 2>&1 || true
started=$SECONDS
"$CLUSTER" up
note "cluster of 3 engines (1 manager, 2 workers) up in $((SECONDS - started)) s"
on() { local node=$1; shift; $DOCKER -H "unix:///run/stackdemo-cluster/$node/docker.sock" "$@"; }
node_addr() { "$CLUSTER" addr "$1"; }
REGISTRY=$("$CLUSTER" registry)

# The image is built once and pushed to the registry, from which every node pulls. The
# host's engine does not list the registry as insecure, so the images go through node1.
started=$SECONDS
for image in stackdemo:v1 stackdemo:v2 "$REDIS_IMAGE" "$HAPROXY_IMAGE"; do
  $DOCKER save "$image" | on node1 load >/dev/null
  name=$REGISTRY/${image#stackdemo-local/}
  on node1 tag "$image" "$name"
  on node1 push "$name" >/dev/null
done
note "images pushed to the registry at $REGISTRY in $((SECONDS - started)) s"
export STACKDEMO_IMAGE=$REGISTRY/stackdemo:v1
export REDIS_IMAGE=$REGISTRY/redis:7
export HAPROXY_IMAGE=$REGISTRY/haproxy:2.6
# Every visit of these tests comes from this one host: no limit per client.
export STACKDEMO_RATE_LIMIT=off
export EDGE_PORT=8080
EDGE=http://$(node_addr node1):$EDGE_PORT/
PASSWORD=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export REDIS_PASSWORD_SECRET=${STACK}_redis_password
printf '%s' "$PASSWORD" | on node1 secret create "$REDIS_PASSWORD_SECRET" - >/dev/null

# --- helpers ----------------------------------------------------------------------------

deploy() {
  log "docker stack deploy $* $STACK"
  (export DOCKER_HOST=unix:///run/stackdemo-cluster/node1/docker.sock
   $DOCKER stack deploy "$@" --with-registry-auth "$STACK" >/dev/null)
}
# replicas SERVICE: running/desired, as `docker service ls` shows them (without notes such
# as "(max 1 per node)").
replicas() {
  on node1 service ls --filter "name=${STACK}_$1" --format '{{.Name}} {{.Replicas}}' |
    awk -v name="${STACK}_$1" '$1 == name {print $2}'
}
# service_at SERVICE N: N of N tasks running (healthy, where there is a check).
service_at() {
  local now; now=$(replicas "$1")
  [ "$now" = "$2/$2" ] || { echo "$1 at ${now:-nothing}"; return 1; }
}
# wait_running SERVICE N SECONDS: until service_at SERVICE N.
wait_running() { wait_for "$3" "$1 at $2/$2" service_at "$1" "$2"; }
# nodes_of SERVICE: the hostnames of the nodes its running tasks are on, sorted.
nodes_of() {
  on node1 service ps "${STACK}_$1" --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' |
    awk '$2 == "Running" {print $1}' | sort | tr '\n' ' ' | sed 's/ $//'
}
node_status() { on node1 node inspect "$1" --format '{{.Status.State}}' 2>/dev/null || echo unknown; }
verify() { "$VERIFY" verify --url "$EDGE" --json "$@"; }
# load_start NAME [PATH]: verify through the edge (at PATH, relative to the edge's `/`;
# `/` itself by default) in the background until load_stop NAME.
load_start() {
  "$VERIFY" verify --url "$EDGE${2:-}" --json --duration 600s --concurrency 4 >"$WORK/$1.json" &
  echo $! >"$WORK/$1.pid"
  # Two seconds of load before whatever comes next, so that it happens under load.
  sleep 2
}
load_stop() {
  local pid; pid=$(cat "$WORK/$1.pid")
  kill -TERM "$pid"
  wait "$pid" || true
  [ "$(field "$WORK/$1.json" 'r["duplicate_counts"]')" -eq 0 ] || fail "$1: a number was answered twice"
  [ "$(field "$WORK/$1.json" 'r["out_of_order"]')" -eq 0 ] || fail "$1: a client's numbers went down"
}
failed() { field "$WORK/$1.json" 'r["failed"]'; }
summary_of() {
  field "$WORK/$1.json" \
    '"%d visits, %d failed%s, longest without a 200 %.1f s" % (r["requests"], r["failed"], " %s" % dict(r["failures"]) if r["failed"] else "", r["longest_gap_ms"] / 1000)'
}
# edge_spreads N: 60 visits through the edge went to N replicas, none failed.
edge_spreads() {
  verify --requests 60 --concurrency 4 >"$WORK/probe.json" 2>/dev/null || true
  if ! { [ -s "$WORK/probe.json" ] &&
         [ "$(field "$WORK/probe.json" 'len(r["per_replica"])')" -eq "$1" ] &&
         [ "$(field "$WORK/probe.json" 'r["failed"]')" -eq 0 ]; }; then
    cat "$WORK/probe.json" 2>/dev/null
    return 1
  fi
}
# wait_edge N: until edge_spreads N.
wait_edge() { wait_for 60 "the edge spreading visits over $1 replicas" edge_spreads "$1"; }
# node_in NODE STATE: the manager reports NODE in STATE (ready, down).
node_in() {
  local now; now=$(node_status "$1")
  [ "$now" = "$2" ] || { echo "$1 is $now"; return 1; }
}
# web_on_three_nodes_but NODE: three web tasks running, none on NODE.
web_on_three_nodes_but() {
  local on; on=$(nodes_of web)
  if ! { [ "$(wc -w <<<"$on")" -eq 3 ] && [[ "$on" != *"$1"* ]]; }; then
    echo "web on $on"
    return 1
  fi
}
# web_back_on NODE: NODE ready again, and three web tasks running.
web_back_on() {
  node_in "$1" ready || return 1
  [ "$(nodes_of web | wc -w)" -eq 3 ] || { echo "web on $(nodes_of web)"; return 1; }
}
# stack_gone: no service (and, with "networks", no network) of the stack left.
stack_gone() {
  local left; left=$(on node1 service ls -q --filter "label=com.docker.stack.namespace=$STACK")
  [ "${1:-}" = networks ] && left+=$(on node1 network ls -q --filter "label=com.docker.stack.namespace=$STACK")
  [ -z "$left" ] || { echo "left: $left"; return 1; }
}
# counts_again: one visit through the edge is counted.
counts_again() { verify --requests 1 --concurrency 1 >"$WORK/back.json" 2>/dev/null; }
# replica_nodes: "replica=node" for every running web container, from each node's engine.
replica_nodes() {
  local node
  for node in node1 node2 node3; do
    on "$node" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_web" 2>/dev/null |
      sed "s/\$/=$node/"
  done | sort | tr '\n' ' '
}
web_task_ids() { on node1 service ps -q --filter desired-state=running "${STACK}_web" | sort | tr '\n' ' '; }

# --- deploy -----------------------------------------------------------------------------

deploy -c docker-compose.yml -c deploy/edge.yml
started=$SECONDS
wait_running redis 1 180
wait_running web 3 180
wait_running edge 1 120
note "stack running (redis 1/1, web 3/3 healthy, edge 1/1) $((SECONDS - started)) s after deploy"
[ "$(nodes_of redis)" = node1 ] || fail "redis runs on '$(nodes_of redis)', not the manager node1"
[ "$(nodes_of edge)" = node1 ] || fail "the edge runs on '$(nodes_of edge)', not the manager node1"
[ "$(nodes_of web)" = "node1 node2 node3" ] || fail "web runs on '$(nodes_of web)', not one per node"
pass "redis and the edge on the manager, web one per node (placement preference spread: node.id)"
wait_edge 3

# --- counting across hosts --------------------------------------------------------------

verify --requests 600 --concurrency 6 >"$WORK/count.json" || fail "verify: $(cat "$WORK/count.json")"
[ "$(field "$WORK/count.json" 'len(r["per_replica"])')" -eq 3 ] || fail "not every replica served"
served=$(field "$WORK/count.json" '" ".join(sorted(r["per_replica"]))')
mapping=$(replica_nodes)
for replica in $served; do
  [[ " $mapping" == *" $replica="* ]] || fail "replica $replica is on no node: $mapping"
done
note "600 visits over 3 replicas on 3 hosts, no number twice: $(field "$WORK/count.json" 'dict(r["per_replica"])'); replicas on nodes: $mapping"

# --- the overlay between hosts ----------------------------------------------------------

NET=${STACK}_webnet
on node3 pull -q "$REDIS_IMAGE" >/dev/null
pong=$(on node3 run --rm --network "$NET" -e REDISCLI_AUTH="$PASSWORD" "$REDIS_IMAGE" redis-cli -h redis ping 2>/dev/null)
[ "$pong" = PONG ] || fail "a container on node3 could not reach redis on node1: $pong"
noauth=$(on node3 run --rm --network "$NET" "$REDIS_IMAGE" redis-cli -h redis GET hits 2>/dev/null || true)
case "$noauth" in *NOAUTH*) ;; *) fail "redis answered node3 without a password: $noauth" ;; esac
pass "a container on node3 (pulled from the registry) reaches redis on node1 over the overlay by name; refused without the password"

# --- a worker killed --------------------------------------------------------------------

load_start kill
killed=$SECONDS
"$CLUSTER" kill node3
wait_for 60 "node3 marked down by the manager" node_in node3 down
down_after=$((SECONDS - killed))
wait_for 120 "web 3/3 again without node3" web_on_three_nodes_but node3
replaced_after=$((SECONDS - killed))
load_stop kill
note "node3 killed under load: marked down after ${down_after} s, web 3/3 again on $(nodes_of web) after ${replaced_after} s; $(summary_of kill)"
"$CLUSTER" restart node3
wait_for 60 "node3 ready again after its restart" node_in node3 ready
note "node3 restarted and ready again; web tasks stay where they are: $(nodes_of web)"

# --- a worker cut off -------------------------------------------------------------------

load_start cut
cut=$SECONDS
"$CLUSTER" cut node2
seen=""
while [ $((SECONDS - cut)) -lt 20 ]; do
  state=$(node_status node2)
  [[ " $seen " == *" $state "* ]] || seen="$seen $state"
  sleep 1
done
web_during_cut=$(nodes_of web)
"$CLUSTER" heal node2
wait_for 120 "node2 ready again after the heal, web 3/3" web_back_on node2
# Load for a few seconds more, on the healed node too: no number may repeat.
sleep 5
load_stop cut
note "node2 cut off for 20 s under load: the manager reported${seen}; web ran on $web_during_cut meanwhile; no number twice after the heal; $(summary_of cut)"

# --- a worker drained -------------------------------------------------------------------

load_start drain
drained=$SECONDS
on node1 node update --availability drain node2 >/dev/null
wait_for 120 "node2 drained, web 3/3 elsewhere" web_on_three_nodes_but node2
drain_time=$((SECONDS - drained))
# Load for a few seconds more on the remaining nodes.
sleep 3
load_stop drain
[ "$(failed drain)" -eq 0 ] || fail "requests failed while node2 was drained: $(cat "$WORK/drain.json")"
on node1 node update --availability active node2 >/dev/null
note "node2 drained under load in ${drain_time} s, web on $(nodes_of web); $(summary_of drain)"

# --- Redis gone for 30 s ----------------------------------------------------------------

before_tasks=$(web_task_ids)
on node1 service scale "${STACK}_redis=0" >/dev/null 2>&1 || true
gone=$SECONDS
wait_for 60 "redis scaled to 0" service_at redis 0
verify --requests 40 --concurrency 4 --timeout 2s >"$WORK/outage.json" || true
[ "$(field "$WORK/outage.json" 'r["succeeded"]')" -eq 0 ] || fail "visits counted without Redis"
# A write sent just before Redis went may have got no answer: its 503 says it is in doubt.
[ "$(field "$WORK/outage.json" 'r["failures"].get("http 503", 0) + r["failures"].get("http 503 in doubt", 0)')" -eq 40 ] || fail "not every visit got a 503: $(cat "$WORK/outage.json")"
outage_p99=$(field "$WORK/outage.json" '"%.1f" % r["latency"]["p99_ms"]')
while [ $((SECONDS - gone)) -lt 30 ]; do sleep 1; done
on node1 service scale "${STACK}_redis=1" >/dev/null 2>&1 || true
back=$SECONDS
wait_for 120 "a visit counted after Redis's return" counts_again
serving_after=$((SECONDS - back))
[ "$(web_task_ids)" = "$before_tasks" ] || fail "web tasks were restarted during the Redis outage: $before_tasks -> $(web_task_ids)"
wait_edge 3
note "redis gone for 30 s: 503s in p99 ${outage_p99} ms, no web task restarted (health stays green after a replica was ready once), visits counted again ${serving_after} s after redis was scaled back"

# --- a rolling update and a rollback across the nodes ----------------------------------

load_start update
updating=$SECONDS
on node1 service update --quiet --image "$REGISTRY/stackdemo:v2" "${STACK}_web" >/dev/null ||
  fail "docker service update to v2 did not complete"
update_time=$((SECONDS - updating))
load_stop update
[ "$(failed update)" -eq 0 ] || fail "requests failed during the rolling update: $(cat "$WORK/update.json")"
verify --requests 120 --concurrency 4 >"$WORK/v2.json"
[ "$(field "$WORK/v2.json" '",".join(r["per_version"])')" = v2 ] || fail "not every replica is v2: $(cat "$WORK/v2.json")"
load_start rollback
on node1 service rollback --quiet "${STACK}_web" >/dev/null || fail "docker service rollback did not complete"
load_stop rollback
[ "$(failed rollback)" -eq 0 ] || fail "requests failed during the rollback: $(cat "$WORK/rollback.json")"
note "rolling update v1 -> v2 across 3 nodes in ${update_time} s: $(summary_of update); rollback to v1: $(summary_of rollback)"

on node1 stack rm "$STACK" >/dev/null
wait_for 120 "docker stack rm removing every service and network" stack_gone networks
pass "docker stack rm left no service or network"

# --- Redis high availability: the node holding the primary killed ----------------------

# The stack's redis (on the manager, with the count it kept across `docker stack rm`) and
# two more servers on the workers, three sentinels, one per node.
count_before_ha=$(field "$WORK/rollback.json" 'r["highest_count"]')
on node1 node update --label-add stackdemo.redis=b node2 >/dev/null
on node1 node update --label-add stackdemo.redis=c node3 >/dev/null
deploy -c docker-compose.yml -c deploy/redis-ha.yml -c deploy/edge.yml
started=$SECONDS
for service in redis redis-b redis-c; do wait_running "$service" 1 180; done
wait_running sentinel 3 180
wait_running web 3 180
wait_running edge 1 120
wait_edge 3
note "HA stack running (3 redis, 3 sentinels, 3 web) $((SECONDS - started)) s after deploy; sentinels on $(nodes_of sentinel)"
# rcli HOST PORT ARGS...: redis-cli from a container on the stack's network.
rcli() {
  local host=$1 port=$2; shift 2
  on node1 run --rm --network "${STACK}_webnet" -e REDISCLI_AUTH="$PASSWORD" "$REDIS_IMAGE" \
    redis-cli -h "$host" -p "$port" --raw "$@" 2>/dev/null
}
# The primary a sentinel names: each sentinel task is asked in turn, with a timeout, since
# redis-cli takes the first address of the name and waits minutes on a dead node's.
primary_name() {
  # shellcheck disable=SC2016 # the script runs in the container, with its own variables
  on node1 run --rm --network "${STACK}_webnet" -e REDISCLI_AUTH="$PASSWORD" "$REDIS_IMAGE" sh -c '
    for address in $(getent ahostsv4 tasks.sentinel | cut -d" " -f1 | sort -u); do
      name=$(timeout 2 redis-cli -h "$address" -p 26379 --raw \
        SENTINEL get-master-addr-by-name mymaster 2>/dev/null | head -1)
      [ -n "$name" ] && { echo "$name"; exit 0; }
    done' 2>/dev/null
}
replicas_of() { rcli "$1" 6379 INFO replication | tr -d '\r' | awk -F: '$1 == "connected_slaves" {print $2}'; }
# has_replicas SERVER N: SERVER has N replicas connected.
has_replicas() {
  local now; now=$(replicas_of "$1")
  [ "$now" = "$2" ] || { echo "$1 has ${now:-no} replicas"; return 1; }
}
# promotable SERVER: the replica SERVER may be promoted (it started unpromotable, with
# replica-priority 0, and deploy/redis-node.sh lifts that once it has copied the primary).
promotable() {
  local now; now=$(rcli "$1" 6379 CONFIG GET replica-priority | tail -1 | tr -d '\r')
  [ "$now" = 100 ] || { echo "$1 has replica-priority ${now:-unknown}"; return 1; }
}
# sentinels_see_promotable N: every sentinel lists N replicas of the primary, each with
# priority 100. A failover reconfigures only the replicas the sentinels know of, and they
# learn of a replica, or of its priority, from the primary's INFO every 10 s: a replica
# attached since stays behind the old primary, out of their sight.
sentinels_see_promotable() {
  local seen
  # shellcheck disable=SC2016 # the script runs in the container, with its own variables
  seen=$(on node1 run --rm --network "${STACK}_webnet" -e REDISCLI_AUTH="$PASSWORD" "$REDIS_IMAGE" sh -c '
    for address in $(getent ahostsv4 tasks.sentinel | cut -d" " -f1 | sort -u); do
      timeout 2 redis-cli -h "$address" -p 26379 --raw SENTINEL REPLICAS mymaster 2>/dev/null |
        awk "prev == \"slave-priority\" && \$0 == \"100\" {n++} {prev = \$0} END {print n+0}"
    done' 2>/dev/null | tr -d '\r' | sort -u | tr '\n' ' ')
  [ "$seen" = "$1 " ] || { echo "the sentinels see ${seen:-no} promotable replicas"; return 1; }
}
# sentinels_take_failover: SENTINEL FAILOVER accepted (the sentinels refuse it, with
# NOGOODSLAVE, until they have watched the replicas for a while).
sentinels_take_failover() { [ "$(rcli sentinel 26379 SENTINEL FAILOVER mymaster)" = OK ]; }
# primary_other_than SERVER [N]: the sentinels name a primary other than SERVER (with N
# replicas connected, if given).
primary_other_than() {
  local now; now=$(primary_name)
  if [ -z "$now" ] || [ "$now" = "$1" ]; then
    echo "the sentinels name ${now:-nothing}"
    return 1
  fi
  [ -z "${2:-}" ] || has_replicas "$now" "$2"
}
# ha_counts: 20 visits through the edge, all counted.
ha_counts() { verify --requests 20 --concurrency 2 >"$WORK/ha-probe.json" 2>/dev/null; }
[ "$(primary_name)" = redis ] || fail "the sentinels name '$(primary_name)' as primary, not redis"
wait_for 240 "redis-b and redis-c both replicating redis" has_replicas redis 2
wait_for 60 "redis-b promotable once it has copied redis" promotable redis-b
wait_for 60 "redis-c promotable once it has copied redis" promotable redis-c
verify --requests 300 --concurrency 4 >"$WORK/ha-before.json" || fail "visits on the HA stack failed: $(cat "$WORK/ha-before.json")"
first=$(field "$WORK/ha-before.json" 'r["lowest_count"]')
[ "$first" -gt "$count_before_ha" ] || fail "the count restarted at $first on the HA stack (it was at $count_before_ha)"
note "the count carried on into the HA stack: last visit before $count_before_ha, first after $first"

# Move the primary to a worker, so that losing its node leaves the swarm's only manager
# (and the edge on it) alone.
wait_for 60 "every sentinel seeing both replicas promotable" sentinels_see_promotable 2
wait_for 60 "the sentinels taking SENTINEL FAILOVER" sentinels_take_failover
# Done when the new primary has both other servers as replicas again.
wait_for 120 "SENTINEL FAILOVER completed, the new primary with 2 replicas" \
  primary_other_than redis 2
primary=$(primary_name)
case $primary in
  redis-b) victim=node2 ;;
  redis-c) victim=node3 ;;
  *) fail "the new primary is '$primary', not redis-b or redis-c" ;;
esac
wait_edge 3
# Visits to the tutorial's counter, a named counter and a badge at once: each keeps the
# promise across the failover.
"$VERIFY" verify --url "${EDGE}c/ha/page" --json --duration 600s --concurrency 2 >"$WORK/ha-page.json" &
echo $! >"$WORK/ha-page.pid"
"$VERIFY" verify --url "${EDGE}badge/ha/badge.svg" --json --duration 600s --concurrency 2 >"$WORK/ha-badge.json" &
echo $! >"$WORK/ha-badge.pid"
load_start ha
killed=$SECONDS
"$CLUSTER" kill "$victim"
wait_for 90 "the sentinels failing over from $primary" primary_other_than "$primary"
failover=$((SECONDS - killed))
now=$(primary_name)
wait_for 120 "visits counted again after the kill" ha_counts
serving=$((SECONDS - killed))
# The load goes on for a few seconds of service on the new primary.
sleep 5
load_stop ha
load_stop ha-page
load_stop ha-badge
for run in ha: ha-page:c/ha/page ha-badge:badge/ha/badge.svg; do
  name=${run%%:*} path=${run#*:}
  "$VERIFY" verify --url "$EDGE$path" --json --requests 1 --concurrency 1 >"$WORK/$name-after.json" ||
    fail "no visit of /$path after the failover: $(cat "$WORK/$name-after.json")"
  after=$(field "$WORK/$name-after.json" 'r["highest_count"]')
  highest=$(field "$WORK/$name.json" 'r["highest_count"]')
  [ "$after" -gt "$highest" ] || fail "/$path: acknowledged visit $highest lost: the count went on at $after"
  note "$victim (with the primary, $primary) killed under load, /$path: $(summary_of "$name"); highest acknowledged before $highest, next after $after"
done
note "the sentinels promoted $now after ${failover} s, every visit counted again after ${serving} s"

# --- cleanup ----------------------------------------------------------------------------

if [ "$KEEP" = 1 ]; then
  log "STACK_KEEP=1: leaving the cluster and $STACK up (edge on $EDGE)"
else
  "$CLUSTER" restart "$victim" >/dev/null
  on node1 stack rm "$STACK" >/dev/null
  wait_for 120 "docker stack rm removing every service" stack_gone
  "$CLUSTER" down
  leftovers=""
  ip netns list | grep -q '^sd-' && leftovers="$leftovers namespaces"
  ip link show sdbr0 >/dev/null 2>&1 && leftovers="$leftovers bridge"
  pgrep -f 'dockerd --config-file /var/lib/stackdemo-cluster' >/dev/null && leftovers="$leftovers engines"
  [ -d /var/lib/stackdemo-cluster ] && leftovers="$leftovers data"
  iptables -S FORWARD | grep -q sdbr0 && leftovers="$leftovers rules"
  [ -z "$leftovers" ] || fail "cluster.sh down left:$leftovers"
  pass "docker stack rm and cluster.sh down left nothing behind"
fi

print_summary
echo "e2e-cluster: 1 passed, 0 failed"
