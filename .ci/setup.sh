#!/usr/bin/env bash
# Sets up a fresh machine: a venv in .venv with torch 2.14.1 (CUDA 13 build, brings triton 3.8),
# the test and benchmark dependencies, and the package with its C++/CUDA extension built in place.
# Idempotent: re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -r requirements.txt
# --no-build-isolation: compile against the torch installed above, not a fresh download.
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
.venv/bin/python -c "import dasp_kernels as d; print('dasp_kernels backends:', d.available_backends()); [print(f'  {b}: not available: {why}') for b, why in d.backend_status().items() if why]"
