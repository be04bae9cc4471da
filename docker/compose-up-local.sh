#!/usr/bin/env bash
# Bring up the stack of docker/docker-compose.yml with podman-compose on one machine without GPUs or an
# image registry: PostgreSQL, the MLflow server (basic auth), a Ray head (token auth) and a CPU worker.
#
#   docker/build-local.sh                 # once: the image ieskips:<version>
#   docker/compose-up-local.sh up         # MLflow on 127.0.0.1:5000, the Ray dashboard/Jobs API on :8265
#   docker/compose-up-local.sh smoke      # docker/smoke-cluster.yaml through the Jobs API, from outside the
#                                         # containers; then docker/local/check_stack.py: its runs read back
#                                         # through MLflow, requests without the token or password refused
#   docker/compose-up-local.sh down       # stop and remove the containers (the volumes stay)
#   docker/compose-up-local.sh purge      # ... and the volumes: runs, artifacts, Tune storage
#
# Secrets: docker/.env if it exists (see docker/example.env), else fresh random ones written once to
# $STATE/.env (mode 600). Every command that follows prints how to read them.
#
# What differs from `docker compose up`, and why:
# - images: no registry is reachable, so PostgreSQL is a stand-in built here from Debian's packages
#   (docker/local/postgres.Containerfile), and every ieskips service runs the CUDA image (the CPU
#   variant cannot be built without PyTorch's CPU index; CUDA torch runs on CPUs). The compose file used
#   is docker-compose.yml with those image names and absolute paths (docker/local/compose_local.py),
#   written to $STATE (a second -f file would make podman-compose 1.0 print the merged file, secrets
#   included);
# - ray-worker-gpu is left out (no GPU here; podman-compose 1.0 ignores deploy.resources.devices);
# - podman-compose 1.0 ignores `depends_on: condition: service_healthy` and `profiles`, and podman runs
#   healthchecks only through systemd timers: the services start one step at a time and this script
#   runs each healthcheck itself until it passes;
# - podman-compose prints the podman commands it runs, environment (secrets) included: its output goes
#   to $STATE/compose.log, readable by you alone.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
STATE=${IESKIPS_COMPOSE_STATE:-/var/tmp/ieskips-compose}
PROJECT=ieskips
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=ieskips:$VERSION
POSTGRES_IMAGE=localhost/ieskips-postgres:15-standin
BASE=localhost/ieskips-python:3.11-bookworm
export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO/docker/local/containers.conf}
umask 077
mkdir -p "$STATE"
COMPOSE=(podman-compose -p "$PROJECT" -f "$STATE/docker-compose.yml")

secrets() {  # docker/.env, or fresh secrets once in $STATE/.env
  if [ -f docker/.env ]; then cp docker/.env "$STATE/.env"; return; fi
  [ -f "$STATE/.env" ] && return
  # One fresh value for every variable docker/example.env lists (all secrets, none with a default).
  python3 - docker/example.env "$STATE/.env" <<'EOF'
import re, secrets, sys
keys = re.findall(r"^(\w+)=$", open(sys.argv[1]).read(), re.M)
with open(sys.argv[2], "w") as out:
    out.writelines(f"{key}={secrets.token_urlsafe(32)}\n" for key in keys)
EOF
  echo "== fresh secrets in $STATE/.env"
}

compose_file() {  # docker-compose.yml with this machine's images and absolute paths
  python3 docker/local/compose_local.py docker/docker-compose.yml "$STATE/docker-compose.yml" "$IMAGE" "$POSTGRES_IMAGE"
}

images() {
  podman image exists "$IMAGE" || { echo "$0: no image $IMAGE: run docker/build-local.sh first" >&2; exit 2; }
  if ! podman image exists "$POSTGRES_IMAGE"; then
    echo "== stand-in PostgreSQL $POSTGRES_IMAGE"
    podman build --network=host --build-arg BASE="$BASE" -f docker/local/postgres.Containerfile \
      -t "$POSTGRES_IMAGE" docker/local >>"$STATE/compose.log" 2>&1
  fi
}

healthy() {  # healthy SERVICE: run its healthcheck until it passes (5 minutes at most)
  local container=${PROJECT}_$1_1
  for _ in $(seq 150); do
    podman healthcheck run "$container" >/dev/null 2>&1 && { echo "== $1 healthy"; return; }
    sleep 2
  done
  echo "$0: $1 is not healthy; podman logs $container" >&2
  exit 1
}

dashboard() {  # the Jobs API answers (refusing a request without the token)
  for _ in $(seq 60); do
    code=$(python3 -c 'import urllib.request, urllib.error
try: print(urllib.request.urlopen("http://127.0.0.1:8265/api/version", timeout=3).status)
except urllib.error.HTTPError as e: print(e.code)
except OSError: print(0)')
    [ "$code" != 0 ] && { echo "== Ray dashboard answers on 127.0.0.1:8265 (HTTP $code without the token)"; return; }
    sleep 2
  done
  echo "$0: the Ray dashboard does not answer; podman logs ${PROJECT}_ray-head_1" >&2
  exit 1
}

up() {
  secrets
  images
  compose_file
  for step in postgres mlflow "ray-head ray-worker-cpu"; do
    # shellcheck disable=SC2086
    "${COMPOSE[@]}" up -d --no-build --no-deps $step >>"$STATE/compose.log" 2>&1
    case $step in postgres|mlflow) healthy "$step" ;; esac
  done
  dashboard
  echo "== up. Secrets: $STATE/.env. Submit from this machine ($0 smoke does this, then checks):"
  echo "   set -a; . $STATE/.env; set +a; export RAY_AUTH_MODE=token"
  echo "   .venv/bin/ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\"
  echo "       ieskips sweep run docker/smoke-cluster.yaml --address auto"
}

smoke() {  # submit docker/smoke-cluster.yaml through the Jobs API from here, then check_stack.py
  local venv=${VENV:-.venv}
  set -a; . "$STATE/.env"; set +a
  export RAY_AUTH_MODE=token
  local start
  start=$(date +%s)
  "$venv/bin/ray" job submit --address http://127.0.0.1:8265 --working-dir . -- \
    ieskips sweep run docker/smoke-cluster.yaml --address auto
  echo "== the job ran in $(( $(date +%s) - start )) s"
  "$venv/bin/python" docker/local/check_stack.py --runs ieskips-smoke
}

case "${1:-}" in
  up) up ;;
  smoke) smoke ;;
  down) compose_file; "${COMPOSE[@]}" down >>"$STATE/compose.log" 2>&1 ;;
  purge) compose_file; "${COMPOSE[@]}" down -v >>"$STATE/compose.log" 2>&1 ;;
  *) echo "usage: $0 up|smoke|down|purge" >&2; exit 2 ;;
esac
