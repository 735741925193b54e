#!/usr/bin/env bash
# Build every image of docker/compose.yaml without any image registry: a Debian base made with
# debootstrap from the Debian mirror this host's apt uses, then PostgreSQL and Redis from Debian's
# packages and the stockpipe images (Dockerfile) on top of it. This is what an air-gapped site runs.
#
#   docker/build-offline.sh            # everything, the Spark variant included
#   docker/build-offline.sh --no-spark # without stockpipe:spark (no Java, no pyspark)
#
# Images (the names compose.yaml uses by default):
#   stockpipe/debian-base:bookworm   debootstrap'd bookworm with python3, python3-venv, ca-certificates
#   postgres:15-bookworm, redis:7-bookworm   from Debian's packages, behaving like the official ones
#   stockpipe:latest, stockpipe:spark
# An existing postgres/redis image that this script did not build (a real official one) is left as it
# is. Each image carries a label with the hash of everything it is built from: an image whose hash
# matches is reused, so a second run on the same machine costs seconds.
#
# Settings (environment): DEBIAN_MIRROR (default: the first Debian mirror in this host's apt
# sources), DEBIAN_SECURITY_MIRROR, DEBIAN_SUITE (bookworm), BUILD_HOST_CA_DIR
# (/usr/local/share/ca-certificates), BUILD_HOST_PIP_CONF (/etc/pip.conf).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
SPARK=1
for arg in "$@"; do
  case "$arg" in
    --no-spark) SPARK=0 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "build-offline.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

SUITE="${DEBIAN_SUITE:-bookworm}"
BASE_IMAGE="stockpipe/debian-base:$SUITE"
LABEL=org.stockpipe.content-hash
log() { printf '%s build-offline: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in docker debootstrap sha256sum; do
  command -v "$tool" >/dev/null || { echo "build-offline.sh: $tool is missing (apt-get install docker.io debootstrap)" >&2; exit 1; }
done
# Docker's 23+ client needs the buildx plugin for BuildKit; without it the classic builder is used
# (the Dockerfiles are written for both).
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

# -- the Debian mirror this host already uses (apt's deb822 .sources or one-line .list files) --------
host_mirror() {  # $1 = a regex the URI must match, $2 = one it must not
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  cat "${files[@]}" 2>/dev/null \
    | grep -v '^[[:space:]]*#' \
    | grep -oE '(https?|file)://[^[:space:]]+' \
    | grep -E "$1" | grep -vE "$2" | head -n1 || true
}
MIRROR="${DEBIAN_MIRROR:-$(host_mirror '/debian/?$' 'security')}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"
SECURITY="${DEBIAN_SECURITY_MIRROR:-$(host_mirror 'debian-security/?$' '^$')}"
SECURITY="${SECURITY:-${MIRROR}-security}"
SECURITY="${SECURITY%/}"

hash_of() { sha256sum | cut -c1-16; }
image_hash() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
image_id() { docker image inspect -f '{{ .Id }}' "$1"; }

# -- 1. the base: debootstrap + docker import ------------------------------------------------------
BASE_PACKAGES="python3,python3-venv,ca-certificates"
base_hash="$(printf '%s\n' v1 "$SUITE" "$MIRROR" "$SECURITY" "$BASE_PACKAGES" | hash_of)"
if [ "$(image_hash "$BASE_IMAGE")" = "$base_hash" ]; then
  log "$BASE_IMAGE is up to date (cached)"
else
  log "debootstrap $SUITE from $MIRROR into $BASE_IMAGE"
  rootfs="$(mktemp -d /var/tmp/stockpipe-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -f "$rootfs/etc/apt/sources.list"
  # What Debian's own container images do: no services started by package scripts, no recommends,
  # no package caches left in layers.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d" && chmod 755 "$rootfs/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90container"
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' >"$rootfs/etc/apt/apt.conf.d/91clean"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import --change "LABEL $LABEL=$base_hash" --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
  log "$BASE_IMAGE imported"
fi
base_id="$(image_id "$BASE_IMAGE")"

# -- the build host's CA certificates and pip configuration, for builds behind a proxy/private index -
HOST_DIR="$ROOT/docker/.build-host"
mkdir -p "$HOST_DIR"
find "$HOST_DIR" -mindepth 1 ! -name README.md -delete
for cert in "${BUILD_HOST_CA_DIR:-/usr/local/share/ca-certificates}"/*.crt; do
  [ -f "$cert" ] && cp "$cert" "$HOST_DIR/"
done
pip_conf="${BUILD_HOST_PIP_CONF:-/etc/pip.conf}"
[ -f "$pip_conf" ] && cp "$pip_conf" "$HOST_DIR/pip.conf"

# -- 2. the images, each rebuilt only when what it is built from changed ---------------------------
build() {  # build IMAGE HASH docker-build-args...
  local image="$1" hash="$2"; shift 2
  if [ "$(image_hash "$image")" = "$hash" ]; then
    log "$image is up to date (cached)"
    return
  fi
  log "building $image"
  local started=$SECONDS previous
  previous="$(docker image inspect -f '{{ .Id }}' "$image" 2>/dev/null || true)"
  docker build --force-rm --label "$LABEL=$hash" --label org.stockpipe.built-offline=true \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" "$@" >&2
  # The image this one replaces (now untagged) would keep its layers forever: remove it, unless a
  # container or another tag still uses it.
  if [ -n "$previous" ] && [ "$previous" != "$(image_id "$image")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
  log "built $image in $((SECONDS - started)) s"
}

service_image() {  # service_image IMAGE DIRECTORY: postgres/redis from Debian, unless a real one is there
  local image="$1" dir="$2"
  if docker image inspect "$image" >/dev/null 2>&1 \
     && [ "$(docker image inspect -f '{{ index .Config.Labels "org.stockpipe.built-offline" }}' "$image")" != "true" ]; then
    log "$image exists and was not built here (an official image): kept"
    return
  fi
  build "$image" "$( (echo "$base_id"; cat "$dir"/*) | hash_of)" "$dir"
}
service_image postgres:15-bookworm docker/postgres
service_image redis:7-bookworm docker/redis

# Everything the stockpipe image is built from (the files the Dockerfile copies, see .dockerignore).
inputs=()
for path in pyproject.toml README.md constraints.txt docker/Dockerfile docker/luigi.cfg docker/requirements.txt \
            docker/cron.py docker/healthcheck.py docker/.build-host stockpipe; do
  [ -e "$path" ] && inputs+=("$path")
done
project_hash="$( (echo "$base_id"
  find "${inputs[@]}" -type f ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum) | hash_of)"
stockpipe_image() {  # stockpipe_image IMAGE TARGET CACHE-STAGE
  if [ "$(image_hash "$1")" != "$project_hash" ]; then
    # The dependency venv's stage is tagged, so that it outlives the cleanup below as layer cache.
    docker build -q --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" -f docker/Dockerfile --target "$3" -t "stockpipe-cache:$3" . >/dev/null
  fi
  build "$1" "$project_hash" -f docker/Dockerfile --target "$2" .
}
stockpipe_image stockpipe:latest runtime deps
if [ "$SPARK" = 1 ]; then
  stockpipe_image stockpipe:spark spark spark-deps
fi
# Untagged stage outputs (the classic builder leaves one per stage and build) only take disk: remove
# them. The expensive stages stay as the next build's layer cache under stockpipe-cache:* tags.
for stale in $(docker images -q --no-trunc --filter dangling=true --filter "label=$LABEL=$base_hash"); do
  docker image rm "$stale" >/dev/null 2>&1 || true
done
log "done: $BASE_IMAGE postgres:15-bookworm redis:7-bookworm stockpipe:latest$([ "$SPARK" = 1 ] && echo ' stockpipe:spark')"
