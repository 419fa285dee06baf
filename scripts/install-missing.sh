#!/usr/bin/env bash
# Installs the Debian packages of the programs that are missing, given as PROGRAM:PACKAGE
# pairs, e.g. `scripts/install-missing.sh redis-server:redis-server dockerd:docker.io`.
# A PROGRAM that starts with / is a file that must exist (a font, say).
# Does nothing when every program is there.
set -euo pipefail

need=()
for pair in "$@"; do
  what=${pair%%:*}
  if [[ $what == /* ]]; then
    [ -e "$what" ] || need+=("${pair#*:}")
  else
    command -v "$what" >/dev/null || need+=("${pair#*:}")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
