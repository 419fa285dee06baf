#!/usr/bin/env bash
# Installs the Debian packages of the programs that are missing, given as PROGRAM:PACKAGE
# pairs, e.g. `scripts/install-missing.sh redis-server:redis-server dockerd:docker.io`.
# Does nothing when every program is there.
set -euo pipefail

need=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
