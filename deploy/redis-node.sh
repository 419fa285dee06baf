#!/bin/sh
# Starts a Redis server (`redis-node.sh server`) or a Sentinel (`redis-node.sh sentinel`)
# of the stack, as a Docker config mounted into the Redis image. The password comes from
# the secret into a config file on tmpfs (/tmp), never onto a command line.
#
# A server asks the sentinels, if there are any, which server is the primary and
# replicates from it; when none knows (no sentinels at all, or the very first start),
# the server named `redis` leads. So the stack's single Redis runs as before, and with
# deploy/redis-ha.yml the same `redis` keeps its data and the others copy it. A server
# that starts as a replica may not be promoted by a failover until it has copied the
# primary (replica-priority 0 until then).
#
# Environment: NODE_NAME (this server's service name, `redis` by default), and
# MIN_REPLICAS_TO_WRITE (replicas a primary must have to take writes, 0 by default).
set -eu
umask 077
password=$(cat /run/secrets/redis_password)

# The primary as the sentinels name it, or nothing.
primary_known_to_sentinels() {
  addresses=$(getent ahostsv4 tasks.sentinel 2>/dev/null | awk '{print $1}' | sort -u || true)
  for address in ${addresses:-sentinel}; do
    # A sentinel task that is not up yet does not answer at all: ask for 2 s at most.
    name=$(REDISCLI_AUTH="$password" timeout 2 redis-cli -h "$address" -p 26379 --raw \
      SENTINEL get-master-addr-by-name mymaster 2>/dev/null | head -1 || true)
    # A name or an address; an error (or nothing) has spaces in it or is empty.
    case $name in '' | *' '*) ;; *) echo "$name"; return ;; esac
  done
}

primary=$(primary_known_to_sentinels)
[ -n "$primary" ] || primary=redis

case ${1:-server} in
  server)
    me=${NODE_NAME:-redis}
    {
      printf 'requirepass "%s"\nmasterauth "%s"\n' "$password" "$password"
      printf 'replica-announce-ip %s\n' "$me"
      printf 'min-replicas-to-write %s\nmin-replicas-max-lag 10\n' "${MIN_REPLICAS_TO_WRITE:-0}"
      printf 'appendonly yes\nappendfsync everysec\ndir /data\n'
      # A replica that took writes a failover then discarded must copy the new primary
      # whole; with no delay the copy starts at once, and visits (which wait for it)
      # resume within a second instead of after Redis's default 5 s.
      printf 'repl-diskless-sync-delay 0\n'
      if [ "$primary" != "$me" ]; then
        # What this server holds from before is old until it has copied the primary:
        # no failover may promote it until then (it would hand out numbers again).
        printf 'replicaof %s 6379\nreplica-priority 0\n' "$primary"
      fi
    } >/tmp/redis.conf
    if [ "$primary" != "$me" ]; then
      # Promotable, once the copy is done (the sentinels see it in the server's INFO).
      # Started twice removed, so that init, not the server, takes it when it ends.
      ( (
        until REDISCLI_AUTH="$password" redis-cli --raw INFO replication 2>/dev/null |
          grep -q '^master_link_status:up' &&
          REDISCLI_AUTH="$password" redis-cli --raw CONFIG SET replica-priority 100 2>/dev/null |
          grep -q '^OK'; do
          sleep 1
        done
      ) & )
    fi
    exec redis-server /tmp/redis.conf
    ;;
  sentinel)
    # Sentinel rewrites its file, so it stays on the tmpfs. `redis-server --sentinel`
    # is in every Redis image; `redis-sentinel` is not.
    {
      printf 'port 26379\ndir /tmp\n'
      printf 'sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n'
      printf 'requirepass "%s"\nsentinel sentinel-pass "%s"\n' "$password" "$password"
      printf 'sentinel monitor mymaster %s 6379 2\n' "$primary"
      printf 'sentinel auth-pass mymaster "%s"\n' "$password"
      printf 'sentinel down-after-milliseconds mymaster 3000\n'
      printf 'sentinel failover-timeout mymaster 10000\n'
      printf 'sentinel parallel-syncs mymaster 1\n'
    } >/tmp/sentinel.conf
    exec redis-server /tmp/sentinel.conf --sentinel
    ;;
  *) echo "usage: redis-node.sh server|sentinel" >&2; exit 2 ;;
esac
