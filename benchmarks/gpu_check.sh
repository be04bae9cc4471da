#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py's docstring): from any folder, with the Python that
# holds torch (PYTHON, else python3), output unbuffered so that a killed run still leaves its log.
#   bash benchmarks/gpu_check.sh --out DIR [--cpu]      (a relative DIR is taken from the repository root)
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
