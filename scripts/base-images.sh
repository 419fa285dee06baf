#!/usr/bin/env bash
# Builds the base images the project's Dockerfile and stack need, for machines that
# cannot pull from a registry: a Rust builder, Redis and HAProxy, each a minimal Debian
# bookworm made with debootstrap and imported with `docker import`. Cached: an image that
# exists already is kept. Prints nothing but progress; the names are fixed:
#
#   stackdemo-local/rust:bookworm     the host's Rust toolchain (with the musl target), gcc,
#                                     musl-tools and make
#   stackdemo-local/redis:7           redis-server and redis-cli, data in /data (uid 999)
#   stackdemo-local/haproxy:2.6       haproxy
#
# On a host with registry access none of this is needed: the defaults (rust:1-bookworm,
# redis:7-alpine, haproxy:2.6) are pulled instead.
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
RUST_IMAGE=stackdemo-local/rust:bookworm
REDIS_IMAGE=stackdemo-local/redis:7
HAPROXY_IMAGE=stackdemo-local/haproxy:2.6

have() { docker image inspect "$1" >/dev/null 2>&1; }

# debootstrap DIR PACKAGES: a minimal Debian in DIR with the packages installed.
bootstrap() {
  local dir=$1 packages=$2
  echo "debootstrap $SUITE with $packages"
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1 ||
    { tail -20 "$dir.log" >&2; exit 1; }
  # Keep the image small: package lists and caches are not needed at run time.
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
         "$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/locale
}

work=$(mktemp -d /var/tmp/stackdemo-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A builder without make, which jemalloc's build needs, is built again.
if ! { have "$RUST_IMAGE" && docker run --rm "$RUST_IMAGE" make --version >/dev/null 2>&1; }; then
  sysroot=$(rustc --print sysroot)
  if [ ! -d "$sysroot/lib/rustlib/x86_64-unknown-linux-musl" ]; then
    rustup target add x86_64-unknown-linux-musl
  fi
  bootstrap "$work/rust" gcc,libc6-dev,musl-tools,make,ca-certificates
  mkdir -p "$work/rust/usr/local/rust" "$work/rust/usr/local/cargo"
  # The toolchain without its documentation; cargo and rustc find their libraries
  # relative to their own path.
  cp -a "$sysroot/bin" "$sysroot/lib" "$work/rust/usr/local/rust/"
  tar -C "$work/rust" -c . | docker import \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'WORKDIR /' - "$RUST_IMAGE" >/dev/null
  rm -rf "$work/rust"
  echo "built $RUST_IMAGE"
fi

if ! have "$REDIS_IMAGE"; then
  bootstrap "$work/redis" redis-server,redis-tools
  # The same user and data folder as the official image, so a stack runs either.
  mkdir -p "$work/redis/data"
  chown 999:999 "$work/redis/data"
  tar -C "$work/redis" -c . | docker import \
    --change 'WORKDIR /data' --change 'EXPOSE 6379' --change 'CMD ["redis-server"]' \
    - "$REDIS_IMAGE" >/dev/null
  rm -rf "$work/redis"
  echo "built $REDIS_IMAGE"
fi

if ! have "$HAPROXY_IMAGE"; then
  bootstrap "$work/haproxy" haproxy
  mkdir -p "$work/haproxy/usr/local/etc/haproxy"
  tar -C "$work/haproxy" -c . | docker import \
    --change 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]' \
    - "$HAPROXY_IMAGE" >/dev/null
  rm -rf "$work/haproxy"
  echo "built $HAPROXY_IMAGE"
fi
