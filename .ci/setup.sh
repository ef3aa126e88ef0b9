#!/usr/bin/env bash
# Sets up a fresh machine: a venv in .venv with torch 2.14.1 (CUDA 13 build, brings triton 3.8),
# the test and benchmark dependencies, and the package with its C++/CUDA extension built in place.
#
# Incremental: a second run with nothing changed takes seconds (docs/install.md).
#   - requirements.txt is installed only when its hash differs from the one stamped in .venv;
#   - the package is installed editable once (console scripts `dasp`, `dasp-kernels`; dasp/ and
#     dasp_kernels/ are imported from this checkout), with the extension left out
#     (DASP_SETUP_SKIP_EXT=1), and again only when setup.py or pyproject.toml change;
#   - the extension is built by `setup.py build_ext --inplace` into dasp_kernels/ with ninja and a
#     persistent build/ folder: only the sources that changed, or include a header that changed,
#     are recompiled. `rm -rf build` forces a full rebuild. The compiler's output goes to
#     build/ext-build.log (shown when the build fails).
# Environment: PYTHON (interpreter for the venv, default python3), MAX_JOBS (parallel compile jobs,
# default 2), DASP_KERNELS_CUDA (0: no CUDA sources, 1: require them; default: when nvcc is found).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# setuptools' note that an editable install imports from the working directory: that is the point.
export PYTHONWARNINGS="ignore:Editable installation"

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

stamp=.venv/.dasp-requirements.sha256
want=$(hash_of requirements.txt)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing requirements.txt into .venv"
    $VPY -m pip install -q --upgrade pip setuptools wheel
    $VPY -m pip install -q -r requirements.txt
    echo "$want" > "$stamp"
fi

stamp=.venv/.dasp-editable.sha256
want="$(hash_of setup.py pyproject.toml) $PWD"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! $VPY -m pip show -q dasp >/dev/null 2>&1; then
    echo "installing the package editable (without the extension)"
    # --no-build-isolation: use the torch installed above, not a fresh download.
    DASP_SETUP_SKIP_EXT=1 $VPY -m pip install -q --no-build-isolation --no-deps -e .
    echo "$want" > "$stamp"
fi

mkdir -p build
log=build/ext-build.log
start=$SECONDS
if ! MAX_JOBS=${MAX_JOBS:-2} $VPY setup.py build_ext --inplace > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "building the extension failed; the whole output is in $log" >&2
    exit 1
fi
n=$(grep -cE '^\[[0-9]+/[0-9]+\] ' "$log" || true)
if grep -q "^skipping '.*' extension (up-to-date)" "$log"; then
    echo "dasp_kernels._C: up to date"
else
    echo "dasp_kernels._C: built in $((SECONDS - start)) s, $n source(s) compiled ($(grep -m1 -o 'with CUDA sources: [A-Za-z]*' "$log"); log: $log)"
fi
$VPY -c "import dasp_kernels as d; print('dasp_kernels backends:', d.available_backends()); [print(f'  {b}: not available: {why}') for b, why in d.backend_status().items() if why]"
