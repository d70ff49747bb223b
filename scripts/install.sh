#!/usr/bin/env bash
# Create the project venv (.venv, or $LFM2_VENV) and install lfm2engine with Open MPI from PyPI and the
# serving extra (FastAPI, uvicorn, Jinja2: python -m lfm2engine.serve).
# Builds the C++ extension with CMake (CUDA too where nvcc exists; LFM2_CUDA=OFF to skip).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$LFM2_ROOT"
[ -x "$LFM2_VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$LFM2_VENV"
"$LFM2_VENV/bin/pip" install -q -U pip
"$LFM2_VENV/bin/pip" install -q -e ".[mpi-wheel,serve]" "$@"
echo "lfm2engine installed in $LFM2_VENV" >&2
