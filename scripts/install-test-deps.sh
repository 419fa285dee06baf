#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: a C compiler and make to
# build jemalloc (the allocator), shellcheck for the scripts, redis-server and
# redis-sentinel for the integration tests, Valkey 8 (from bookworm-backports, for
# WAITAOF), Chromium for the page test, wrk for the benchmark, the DejaVu fonts whose
# metrics the badges use, mkfs.ext4 and fsfreeze for the test of a disk that stalls.
# Idempotent.
set -euo pipefail
here=$(dirname "$0")
"$here/install-missing.sh" cc:gcc make:make shellcheck:shellcheck redis-server:redis-server \
  redis-sentinel:redis-sentinel chromium:chromium wrk:wrk mkfs.ext4:e2fsprogs \
  fsfreeze:util-linux \
  /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf:fonts-dejavu-core

if ! command -v valkey-server >/dev/null || ! command -v valkey-sentinel >/dev/null; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
      >/etc/apt/sources.list.d/bookworm-backports.list
  fi
  echo "installing: valkey-server valkey-sentinel (bookworm-backports)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports valkey-server valkey-sentinel >/dev/null
fi
