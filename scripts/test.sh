#!/usr/bin/env bash
# Runs the project's tests, installing first whatever a fresh Debian machine lacks (as
# root). This is the command the README gives and CI runs.
#
#   scripts/test.sh            # everything: lints, cargo test, the stack on Swarm
#   scripts/test.sh cargo      # lints (shellcheck, rustfmt, clippy) and cargo test only
#
# cargo test starts its own redis-server, redis-sentinel, Valkey and Chromium; the stack
# tests start dockerd and a single-node swarm when none runs, and a three-node swarm of
# their own (scripts/cluster.sh), which they remove at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
case $what in
  all | cargo) ;;
  *) echo "usage: scripts/test.sh [all|cargo]" >&2; exit 2 ;;
esac

scripts/install-test-deps.sh

shellcheck scripts/*.sh bench/*.sh deploy/*.sh .ci/run
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked

if [ "$what" = all ]; then
  scripts/e2e-stack.sh
  scripts/e2e-cluster.sh
fi
