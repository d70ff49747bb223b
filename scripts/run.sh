#!/usr/bin/env bash
# Run the workload under MPI: mpirun -np ${NP:-4} python -m lfm2engine.generate "$@".
# Flags are generate's: -v validate against answers.bin, -n N samples, -w W warm-up passes,
# --model DIR or FILE.gguf, --plan dp|ep|tp, --dtype float32|bfloat16|float16|q8_0|q4_0|q4_k|auto, --json ...
# (python -m lfm2engine.generate --help).
# NP=1 or no mpirun found: runs without MPI.
set -euo pipefail
source "$(dirname "$0")/env.sh"
NP="${NP:-4}"
if [ "$NP" -le 1 ] || [ -z "$MPIRUN" ]; then
  [ -z "$MPIRUN" ] && [ "$NP" -gt 1 ] && echo "[run.sh] no mpirun found: running one process" >&2
  exec "$PY" -m lfm2engine.generate "$@"
fi
exec "$MPIRUN" "${MPI_FLAGS[@]}" -np "$NP" "$PY" -m lfm2engine.generate "$@"
