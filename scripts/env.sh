# Sourced by the scripts: picks the project's venv, its python and mpirun. Not for direct use.
LFM2_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LFM2_VENV="${LFM2_VENV:-$LFM2_ROOT/.venv}"
if [ -x "$LFM2_VENV/bin/python" ]; then PY="$LFM2_VENV/bin/python"; else PY="${PYTHON:-python3}"; fi
if [ -n "${MPIRUN:-}" ]; then :; elif [ -x "$LFM2_VENV/bin/mpirun" ]; then MPIRUN="$LFM2_VENV/bin/mpirun";
else MPIRUN="$(command -v mpirun || true)"; fi
# Open MPI refuses root and more ranks than cores unless told; harmless elsewhere.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPI_FLAGS=()
if [ -n "$MPIRUN" ] && "$MPIRUN" --version 2>/dev/null | grep -q "Open MPI"; then MPI_FLAGS+=(--oversubscribe); fi
