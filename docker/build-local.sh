#!/usr/bin/env bash
# Build the ieskips image from docker/Dockerfile with podman where no image registry is reachable, then
# run it. One command for the full build:
#
#   docker/build-local.sh            # CUDA image ieskips:<version>, then `ieskips --help` inside it
#   docker/build-local.sh --smoke    # ... and the smoke sweep (sweeps/smoke.yaml) inside it
#   docker/build-local.sh --sources  # only the stage without torch (seconds; what tests/e2e/test_images.py builds)
#
# The base: $PYTHON_IMAGE if set (e.g. python:3.11-slim-bookworm where a registry is reachable), else a
# stand-in built once with mmdebstrap (Debian bookworm's Python 3.11, the Python of the lock) and
# imported as localhost/ieskips-python:3.11-bookworm. TORCH_VARIANT=cpu builds the CPU variant (needs
# PyTorch's CPU index). Needs: podman, runc, mmdebstrap (Debian: apt-get install podman runc mmdebstrap
# iptables). pip inside the build reaches the package index through the host's network and trusts the
# host's CA bundle (mounted for the build only, never copied into the image). No secret goes in.
set -euo pipefail

cd "$(dirname "$0")/.."
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
VARIANT=${TORCH_VARIANT:-cuda}
TAG=ieskips:$VERSION$([ "$VARIANT" = cpu ] && echo -cpu || true)
STANDIN=localhost/ieskips-python:3.11-bookworm
BASE=${PYTHON_IMAGE:-$STANDIN}
CA=/etc/ssl/certs/ca-certificates.crt
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/local/containers.conf}

MODE=build
case "${1:-}" in
  "") ;;
  --smoke) MODE=smoke ;;
  --sources) MODE=sources ;;
  *) echo "usage: $0 [--smoke|--sources]" >&2; exit 2 ;;
esac

need() { command -v "$1" >/dev/null || { echo "$0: $1 not found (Debian: apt-get install $2)" >&2; exit 2; }; }
need podman podman
need runc runc

# The stand-in base: what python:3.11-slim-bookworm offers that the Dockerfile uses (python with venv
# and pip, CA certificates, apt), from Debian's own packages.
standin_base() {
  need mmdebstrap mmdebstrap
  local tar
  tar=$(mktemp /var/tmp/ieskips-base.XXXXXX.tar)
  echo "== stand-in base $STANDIN (mmdebstrap, about a minute)"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    --customize-hook='ln -s python3 "$1/usr/bin/python"' bookworm "$tar"
  podman import --change 'CMD ["python"]' "$tar" "$STANDIN" >/dev/null
  rm -f "$tar"
}
if [ "$BASE" = "$STANDIN" ] && ! podman image exists "$STANDIN"; then standin_base; fi

build() {  # build TARGET-ARGS... : the Dockerfile with this script's settings
  local mounts=()
  [ -f "$CA" ] && mounts=(--volume "$CA:$CA:ro")
  podman build --network=host "${mounts[@]}" --ignorefile docker/Dockerfile.dockerignore \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg TORCH_VARIANT="$VARIANT" -f docker/Dockerfile "$@" .
}

if [ "$MODE" = sources ]; then
  build --target sources -t "ieskips-sources:$VERSION"
  podman run --rm --network=none "ieskips-sources:$VERSION" | sort
  exit 0
fi

echo "== podman build $TAG (base $BASE)"
start=$(date +%s)
build -t "$TAG"
echo "== built $TAG in $(( $(date +%s) - start )) s; size $(podman image inspect --format '{{.Size}}' "$TAG" | numfmt --to=iec)"

echo "== ieskips --help inside $TAG"
podman run --rm --network=none "$TAG" ieskips --help

if [ "$MODE" = smoke ]; then
  # A local Ray and a SQLite MLflow store in the container's working directory; Ray's object store wants
  # a larger /dev/shm than the default 64 MB. One thread per trial beside Ray (2 trials at a time).
  echo "== the smoke sweep inside $TAG"
  start=$(date +%s)
  podman run --rm --network=none --shm-size=1g -e OMP_NUM_THREADS=1 "$TAG" \
    ieskips sweep run sweeps/smoke.yaml
  echo "== the smoke sweep ran in $(( $(date +%s) - start )) s"
fi
