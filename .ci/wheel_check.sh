#!/usr/bin/env bash
# The package as a user installs it: builds a wheel from a copy of this checkout (tracked and
# untracked files, none that git ignores: what a clone has), installs it, not editable, into a
# fresh venv with requirements.txt, and runs the test suite against the installed package from a
# folder that holds the tests, benchmarks and docs but not dasp/ or dasp_kernels/.
#
#   .ci/wheel_check.sh [pytest args]      e.g. .ci/wheel_check.sh -x -k "not slow"
#
# Environment: WHEEL_CHECK_DIR (work folder, default: a new temporary one; its venv is reused when
# there), PYTHON (default python3), DASP_KERNELS_CUDA (default 0: the wheel without the CUDA
# sources, ~5 min less to build; 1 to include them, empty: when nvcc is found), MAX_JOBS
# (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${WHEEL_CHECK_DIR:-$(mktemp -d /tmp/dasp-wheel-check.XXXXXX)}
PY=${PYTHON:-python3}
export DASP_KERNELS_CUDA=${DASP_KERNELS_CUDA-0} MAX_JOBS=${MAX_JOBS:-2}
echo "wheel check in $WORK (DASP_KERNELS_CUDA=${DASP_KERNELS_CUDA:-auto})"
mkdir -p "$WORK"
rm -rf "$WORK/src" "$WORK/dist" "$WORK/run"
mkdir -p "$WORK/src" "$WORK/run"
git ls-files -z --cached --others --exclude-standard | (cd "$REPO" && xargs -0 cp --parents -t "$WORK/src")

[ -x "$WORK/venv/bin/python" ] || "$PY" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
$VPY -m pip install -q --upgrade pip setuptools wheel
$VPY -m pip install -q -r requirements.txt
# The extension is compiled against the venv's torch, hence no build isolation.
(cd "$WORK/src" && $VPY -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .)
$VPY -m pip install -q --force-reinstall --no-deps "$WORK"/dist/dasp-*.whl

# Tests, benchmarks, docs and the pytest settings; no package sources.
(cd "$WORK/src" && cp -r tests benchmarks docs csrc README.md pyproject.toml requirements.txt .gitignore \
    "$WORK/run/")
cd "$WORK/run"
$VPY - <<'PY'
import os, dasp, dasp_kernels
for m in (dasp, dasp_kernels):
    assert "site-packages" in m.__file__, f"{m.__name__} imported from {m.__file__}"
print("installed:", os.path.dirname(dasp_kernels.__file__), "backends:",
      dasp_kernels.available_backends())
assert dasp_kernels.backend_status()["cpu"] is None, dasp_kernels.backend_status()["cpu"]
PY
"$WORK/venv/bin/dasp" --help >/dev/null
"$WORK/venv/bin/dasp-kernels" check --quick >/dev/null
TRITON_INTERPRET=${TRITON_INTERPRET:-1} $VPY -m pytest tests -q -p no:cacheprovider "$@"
