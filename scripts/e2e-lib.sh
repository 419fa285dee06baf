# shellcheck shell=bash
# Shared by the end-to-end scripts (sourced, not run): reporting, the host's Docker
# engine, and the images under test. Expects WORK (a scratch folder) to be set.

E2E_NAME=${E2E_NAME:-e2e}
SUMMARY=()

log() { printf '[%s %s] %s\n' "$E2E_NAME" "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
pass() { log "ok: $*"; }
note() { SUMMARY+=("$*"); log "measured: $*"; }
# wait_for SECONDS WHAT COMMAND [ARGS...]: runs COMMAND every half second until it
# succeeds; after SECONDS fails with "WHAT" and what COMMAND printed on its last try (a
# check prints the state it saw when it fails). COMMAND runs in a subshell: it cannot set
# the caller's variables.
wait_for() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1)) seen
  shift 2
  until seen=$("$@" 2>&1); do
    [ $SECONDS -lt $deadline ] || fail "$what: not within $limit s${seen:+ ($seen)}"
    sleep 0.5
  done
}
print_summary() {
  log "summary:"
  local line
  for line in "${SUMMARY[@]}"; do log "  $line"; done
}

# field FILE EXPRESSION: evaluates a Python expression over the JSON report `r` in FILE.
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"; }

# Installs and starts the host's Docker engine when missing; sets DOCKER to its own
# client (it matches the daemon and builds with BuildKit without buildx).
host_docker_up() {
  scripts/install-missing.sh dockerd:docker.io debootstrap:debootstrap python3:python3 curl:curl
  DOCKER=docker
  [ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
  export DOCKER_BUILDKIT=1
  if ! $DOCKER info >/dev/null 2>&1; then
    log "starting dockerd"
    # Not a job of this script: its clean-up stops its own jobs, not the engine.
    (setsid dockerd >/var/log/dockerd.log 2>&1 &)
    local _
    for _ in $(seq 1 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
    $DOCKER info >/dev/null 2>&1 || fail "dockerd did not start (see /var/log/dockerd.log)"
  fi
}

# Builds the base images locally, for machines that cannot pull from a registry
# (scripts/base-images.sh), then
# stackdemo:v1 and stackdemo:v2, and copies the image's static binary to $VERIFY: it runs
# on the host too, as the verify client.
images_built() {
  scripts/base-images.sh
  export REDIS_IMAGE=stackdemo-local/redis:7
  export HAPROXY_IMAGE=stackdemo-local/haproxy:2.6
  local version started
  for version in v1 v2; do
    log "docker build stackdemo:$version"
    started=$SECONDS
    $DOCKER build --quiet \
      --build-arg RUST_IMAGE=stackdemo-local/rust:bookworm \
      --build-arg VERSION="$version" \
      --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
      --secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt \
      -t "stackdemo:$version" . >/dev/null
    log "built stackdemo:$version in $((SECONDS - started)) s"
  done
  VERIFY=$WORK/stackdemo
  local cid
  cid=$($DOCKER create stackdemo:v1)
  $DOCKER cp "$cid:/stackdemo" "$VERIFY" >/dev/null
  $DOCKER rm "$cid" >/dev/null
}

# A random password as the Docker secret NAME, through the docker command given.
secret_created() {
  local name=$1; shift
  "$@" secret inspect "$name" >/dev/null 2>&1 && return 0
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | "$@" secret create "$name" - >/dev/null
}
