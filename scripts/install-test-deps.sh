#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: a C compiler and make to
# build jemalloc (the allocator), redis-server and redis-sentinel for the integration
# tests, Chromium for the page test, wrk for the benchmark. Idempotent.
set -euo pipefail
exec "$(dirname "$0")/install-missing.sh" cc:gcc make:make redis-server:redis-server \
  redis-sentinel:redis-sentinel chromium:chromium wrk:wrk
