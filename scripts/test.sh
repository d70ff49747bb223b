#!/usr/bin/env bash
# Install lfm2engine with its test extras (torch 2.13.0 CPU, transformers 5.23.0, Open MPI) and run the tests.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k moe -x
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$LFM2_ROOT"
[ -x "$LFM2_VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$LFM2_VENV"
"$LFM2_VENV/bin/pip" install -q -U pip
"$LFM2_VENV/bin/pip" install -q -e ".[test,mpi-wheel]"
# The core was just built: a broken build must fail the C++ tests, not skip them (tests/helpers.py).
export LFM2_REQUIRE_CORE="${LFM2_REQUIRE_CORE:-1}"
exec "$LFM2_VENV/bin/python" -m pytest -q "$@"
