#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: redis-server for the
# integration tests, Chromium for the page test, wrk for the benchmark. Idempotent.
set -euo pipefail
exec "$(dirname "$0")/install-missing.sh" redis-server:redis-server chromium:chromium wrk:wrk
