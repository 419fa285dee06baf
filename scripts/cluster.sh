#!/usr/bin/env bash
# A Docker Swarm of several hosts on one machine: three Docker engines, each in a network
# namespace of its own with its own address, data, sockets and hostname, joined into one
# swarm (node1 the manager, node2 and node3 workers), and a Distribution registry every
# node pulls from. For testing what crosses hosts, and for breaking hosts.
#
#   scripts/cluster.sh up [--managers 3]   make it (idempotent; installs what is missing)
#   scripts/cluster.sh down                remove everything it made
#   scripts/cluster.sh env NODE            print `export DOCKER_HOST=…` for NODE's engine
#   scripts/cluster.sh addr NODE           print NODE's address
#   scripts/cluster.sh registry            print the registry's address (host:port)
#   scripts/cluster.sh kill NODE           power loss: the engine and every container die
#   scripts/cluster.sh restart NODE        the engine comes back and rejoins the swarm
#   scripts/cluster.sh cut NODE            partition: NODE cannot reach the other nodes
#   scripts/cluster.sh heal NODE           undo `cut`
#
# Why namespaces rather than Docker-in-Docker: each engine is the host's own dockerd
# binary with its own network stack, so overlay traffic (VXLAN) really crosses a network
# between hosts, a kill stops every process of a node at once, and no engine image has
# to be built or pulled, which matters on machines that reach no public registry.
#
# Needs root. Addresses: a bridge sdbr0 at 10.77.0.1/24 on the host, node N at
# 10.77.0.(10+N); the registry listens on 10.77.0.1:5000 over plain HTTP, which every
# node's engine lists in insecure-registries.
set -euo pipefail

ROOT=/var/lib/stackdemo-cluster
RUN=/run/stackdemo-cluster
BRIDGE=sdbr0
NET=10.77.0
HOST_ADDR=$NET.1
REGISTRY=$HOST_ADDR:5000
NODES=(node1 node2 node3)
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

node_ok() { [[ " ${NODES[*]} " == *" $1 "* ]] || die "no node '$1' (${NODES[*]})"; }
addr() { echo "$NET.$((10 + ${1#node}))"; }
ns() { echo "sd-$1"; }
sock() { echo "$RUN/$1/docker.sock"; }
on() { local node=$1; shift; "$DOCKER" -H "unix://$(sock "$node")" "$@"; }
running() { on "$1" info >/dev/null 2>&1; }

# --- the network --------------------------------------------------------------------

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$HOST_ADDR/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # The host's dockerd sets the FORWARD policy to DROP, and bridged traffic passes
  # iptables: let the nodes talk to each other.
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
    iptables -I FORWARD 1 -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  local node
  for node in "${NODES[@]}"; do
    local n; n=$(ns "$node")
    if ! ip netns list | grep -qw "$n"; then
      ip netns add "$n"
      ip link add "$n" type veth peer name eth0 netns "$n"
      ip link set "$n" master "$BRIDGE" up
      ip -n "$n" addr add "$(addr "$node")/24" dev eth0
      ip -n "$n" link set eth0 up
      ip -n "$n" link set lo up
      ip -n "$n" route add default via "$HOST_ADDR"
    fi
    # The resolver of the nodes (and, through Docker's DNS, of their containers): one
    # that answers at once (below), so that a name no one knows fails fast instead of
    # stalling whoever asked (image tag look-ups; a Sentinel, which a stall of 2 s puts in
    # its "tilt" mode, where it fails nothing over).
    mkdir -p "/etc/netns/$n"
    echo "nameserver $HOST_ADDR" >"/etc/netns/$n/resolv.conf"
  done
  resolver_up
}

# dnsmasq on the bridge address, knowing no names and asking no one: every query gets an
# immediate refusal. The machines these tests run on may reach no DNS server at all.
resolver_up() {
  [ -f "$RUN/dnsmasq.pid" ] && kill -0 "$(cat "$RUN/dnsmasq.pid")" 2>/dev/null && return 0
  mkdir -p "$RUN"
  dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --listen-address="$HOST_ADDR" \
    --bind-interfaces --port=53 --pid-file="$RUN/dnsmasq.pid"
}

network_down() {
  if [ -f "$RUN/dnsmasq.pid" ]; then
    kill "$(cat "$RUN/dnsmasq.pid")" 2>/dev/null || true
  fi
  local node
  for node in "${NODES[@]}"; do
    ip netns delete "$(ns "$node")" 2>/dev/null || true
    ip link delete "$(ns "$node")" 2>/dev/null || true
    rm -rf "/etc/netns/$(ns "$node")"
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  while iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do
    iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  done
}

# --- the engines --------------------------------------------------------------------

# Writes NODE's daemon configuration and the script that starts it inside its namespace.
engine_files() {
  local node=$1 dir=$ROOT/$1
  mkdir -p "$dir" "$RUN/$node"
  cat >"$dir/daemon.json" <<EOF
{
  "data-root": "$dir/docker",
  "exec-root": "$RUN/$node/exec",
  "pidfile": "$RUN/$node/docker.pid",
  "hosts": ["unix://$(sock "$node")"],
  "cgroup-parent": "/stackdemo-$node",
  "deprecated-key-path": "$dir/key.json",
  "insecure-registries": ["$REGISTRY"],
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m"}
}
EOF
  # `ip netns exec` mounts a fresh /sys, which hides the cgroup hierarchies: mount them
  # again as the host has them, and give the node a hostname of its own.
  awk '$3 == "cgroup" || $3 == "cgroup2" {print $2, $3, $4}' /proc/self/mounts >"$dir/cgroups"
  cat >"$dir/init.sh" <<EOF
#!/bin/sh
set -e
hostname $node
mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
while read -r path type options; do
  mkdir -p "\$path"
  mount -t "\$type" -o "\$options" "\$type" "\$path"
done <"$dir/cgroups"
exec dockerd --config-file "$dir/daemon.json"
EOF
  chmod +x "$dir/init.sh"
}

engine_start() {
  local node=$1
  running "$node" && return 0
  engine_files "$node"
  ip netns exec "$(ns "$node")" unshare --uts -- "$ROOT/$node/init.sh" \
    >"$ROOT/$node/dockerd.log" 2>&1 &
  local _
  for _ in $(seq 1 150); do
    running "$node" && return 0
    sleep 0.2
  done
  tail -20 "$ROOT/$node/dockerd.log" >&2
  die "the engine of $node did not start"
}

# Every process of NODE: its engine (in its network namespace) and its containers (in its
# cgroup parent, as they have network namespaces of their own).
node_pids() {
  local node=$1
  ip netns pids "$(ns "$node")" 2>/dev/null || true
  local tasks
  for tasks in /sys/fs/cgroup/pids/stackdemo-"$node"/tasks /sys/fs/cgroup/pids/stackdemo-"$node"/*/tasks; do
    [ -f "$tasks" ] && cat "$tasks"
  done
  return 0
}

# Kills every process of NODE at once: its containers are frozen first so that nothing
# they run reacts, then everything gets SIGKILL, then they are thawed to receive it.
node_kill() {
  local node=$1 freezer=/sys/fs/cgroup/freezer/stackdemo-$1
  [ -d "$freezer" ] && echo FROZEN >"$freezer/freezer.state"
  node_pids "$node" | sort -u | xargs -r kill -9 2>/dev/null || true
  [ -d "$freezer" ] && echo THAWED >"$freezer/freezer.state"
  local _
  for _ in $(seq 1 100); do
    [ -z "$(node_pids "$node")" ] && break
    sleep 0.1
  done
  rm -f "$RUN/$node/docker.pid" "$(sock "$node")"
}

# Stale sockets of killed containerd shims, left in the host's shared folder: those no
# process listens on any more.
shim_sockets_clean() {
  [ -d /run/containerd/s ] || return 0
  local live socket
  live=$(ss -xlH 2>/dev/null | awk '{print $5}')
  for socket in /run/containerd/s/*; do
    [ -S "$socket" ] || continue
    grep -qxF "$socket" <<<"$live" || rm -f "$socket"
  done
}

# --- the registry -------------------------------------------------------------------

registry_up() {
  curl -fs "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0
  mkdir -p "$ROOT/registry"
  cat >"$ROOT/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $ROOT/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  nohup docker-registry serve "$ROOT/registry.yml" >"$ROOT/registry.log" 2>&1 &
  echo $! >"$RUN/registry.pid"
  local _
  for _ in $(seq 1 50); do
    curl -fs "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "the registry did not start (see $ROOT/registry.log)"
}

registry_down() {
  if [ -f "$RUN/registry.pid" ]; then
    kill "$(cat "$RUN/registry.pid")" 2>/dev/null || true
    rm -f "$RUN/registry.pid"
  fi
}

# --- the swarm ----------------------------------------------------------------------

swarm_up() {
  local managers=$1
  if [ "$(on node1 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "docker swarm init on node1"
    # A 1 s heartbeat: a dead node is marked down in about 3.5 s instead of 11–14 s.
    on node1 swarm init --advertise-addr "$(addr node1)" --dispatcher-heartbeat 1s >/dev/null
  fi
  local worker manager node
  worker=$(on node1 swarm join-token -q worker)
  manager=$(on node1 swarm join-token -q manager)
  for node in node2 node3; do
    [ "$(on "$node" info --format '{{.Swarm.LocalNodeState}}')" = active ] && continue
    local token=$worker
    [ "$managers" -ge 3 ] && token=$manager
    on "$node" swarm join --token "$token" --advertise-addr "$(addr "$node")" "$(addr node1):2377" >/dev/null
  done
  local _
  for _ in $(seq 1 100); do
    [ "$(on node1 node ls --format '{{.Status}}' | grep -c Ready)" -eq 3 ] && return 0
    sleep 0.2
  done
  die "the nodes did not all join"
}

# --- commands -----------------------------------------------------------------------

cmd_up() {
  local managers=1
  if [ "${1:-}" = --managers ]; then managers=${2:?--managers takes a number}; fi
  [ "$(id -u)" -eq 0 ] || die "needs root"
  "$(dirname "$0")/install-missing.sh" dockerd:docker.io docker-registry:docker-registry \
    iptables:iptables ip:iproute2 unshare:util-linux curl:curl ss:iproute2 dnsmasq:dnsmasq-base
  local started=$SECONDS node
  network_up
  for node in "${NODES[@]}"; do engine_start "$node"; done
  registry_up
  swarm_up "$managers"
  log "up in $((SECONDS - started)) s: ${NODES[*]} at $(addr node1)..$(addr node3), registry $REGISTRY"
}

cmd_down() {
  local node
  for node in "${NODES[@]}"; do
    if [ -f "$RUN/$node/docker.pid" ]; then
      kill "$(cat "$RUN/$node/docker.pid")" 2>/dev/null || true
    fi
  done
  for node in "${NODES[@]}"; do node_kill "$node"; done
  registry_down
  network_down
  for node in "${NODES[@]}"; do
    local cgroup
    for cgroup in /sys/fs/cgroup/*/stackdemo-"$node"; do
      if [ -d "$cgroup" ]; then
        find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
      fi
    done
  done
  shim_sockets_clean
  rm -rf "$ROOT" "$RUN"
  log "down"
}

cmd="${1:-}"
shift || true
case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  env) node_ok "${1:?}"; echo "export DOCKER_HOST=unix://$(sock "$1")" ;;
  addr) node_ok "${1:?}"; addr "$1" ;;
  registry) echo "$REGISTRY" ;;
  kill) node_ok "${1:?}"; node_kill "$1"; log "$1 killed" ;;
  restart) node_ok "${1:?}"; engine_start "$1"; log "$1 restarted" ;;
  cut)
    node_ok "${1:?}"
    n=$(ns "$1")
    for other in "${NODES[@]}"; do
      [ "$other" = "$1" ] && continue
      ip netns exec "$n" iptables -I INPUT 1 -s "$(addr "$other")" -j DROP -m comment --comment stackdemo-cut
      ip netns exec "$n" iptables -I OUTPUT 1 -d "$(addr "$other")" -j DROP -m comment --comment stackdemo-cut
    done
    log "$1 cut off from the other nodes"
    ;;
  heal)
    node_ok "${1:?}"
    n=$(ns "$1")
    for chain in INPUT OUTPUT; do
      while rule=$(ip netns exec "$n" iptables -S "$chain" | grep -m1 stackdemo-cut); do
        # shellcheck disable=SC2086
        ip netns exec "$n" iptables ${rule/-A/-D}
      done
    done
    log "$1 healed"
    ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
