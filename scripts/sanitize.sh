#!/usr/bin/env bash
# Build _core with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option LFM2_SANITIZE, CUDA off)
# into build/sanitize/ and run the test files that call the C++ core in-process under it, with the
# sanitizer runtimes preloaded (Python itself is not instrumented) and leak detection off. Any
# ASan/UBSan report fails the run. Uses the venv of scripts/test.sh (run that first) for pytest and
# the test dependencies; the normal build and install are not touched: the instrumented package is
# staged in build/sanitize/pkg/ and imported from there (`python -S`: no editable-install hook).
# Extra arguments go to pytest (default: the files below, -x). Called by .ci/run.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$LFM2_ROOT"
B="$LFM2_ROOT/build/sanitize"
# Every test file that exercises the C++ core in this process (files that only start subprocesses
# or mpirun would test the normal build there).
FILES=(tests/test_ops_cpu.py tests/test_model_fused.py tests/test_weights_safety.py tests/test_backends.py
       tests/test_model.py tests/test_backend_cuda_emulated.py tests/test_parallel_plan.py tests/test_specdecode.py
       tests/test_cli_errors.py tests/test_ops.py tests/test_fuzz.py tests/test_numerics_guards.py tests/test_quant_dot.py)
command -v cmake > /dev/null || "$PY" -m pip install -q cmake ninja
PATH="$LFM2_VENV/bin:$PATH"
GEN=(); command -v ninja > /dev/null && GEN=(-G Ninja)
cmake -S . -B "$B" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLFM2_SANITIZE=ON -DLFM2_CUDA=OFF \
      -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" > "$B.configure.log" 2>&1 \
  || { cat "$B.configure.log"; exit 1; }
cmake --build "$B" -j "$(nproc)"
rm -rf "$B/pkg" && mkdir -p "$B/pkg"
cp -r python/lfm2engine "$B/pkg/"
cp "$B"/_core*.so "$B/pkg/lfm2engine/"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=86"
run() { LD_PRELOAD="$PRELOAD" PYTHONPATH="$B/pkg:$SITE:$LFM2_ROOT/tests" LFM2_REQUIRE_CORE=1 "$PY" -S "$@"; }
got="$(run -c 'import lfm2engine._core as c; print(c.__file__)')"
case "$got" in "$B/pkg/"*) ;; *) echo "sanitize.sh: imported $got, not the instrumented build" >&2; exit 1;; esac
# The harness must catch what it is for: the use-after-free of issue 16 (a fused model built
# straight from the engine's weights, without the snapshot that pins them, an expert array
# replaced behind the freeze's back, then a forward) must be reported.
set +e
run - > "$B/canary.log" 2>&1 <<'PY'
import gc, tempfile
from hf_oracle import make_hf_checkpoint
from lfm2engine import Engine, _core
eng = Engine.from_pretrained(make_hf_checkpoint(tempfile.mkdtemp(), "moe_a", seed=1))
eng.backend.fused_model = lambda cfg, w: _core.cpu.Model(cfg, eng.w)  # no snapshot
eng.logits([[1, 2, 3]])
lw = next(lw for lw in eng.w.layers if lw.ew13 is not None)
object.__setattr__(lw, "ew13", lw.ew13.copy())  # the array the C++ model reads is freed
gc.collect()
eng.logits([[1, 2, 3]])
PY
canary=$?
set -e
if [ "$canary" != 86 ] || ! grep -q "heap-use-after-free" "$B/canary.log"; then
  echo "sanitize.sh: the deliberate use-after-free was not reported (exit $canary); see $B/canary.log" >&2
  exit 1
fi
echo "sanitize.sh: canary use-after-free reported as expected; running the tests"
LOG="$B/pytest.log"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-x "${FILES[@]}")
set +e
run -m pytest -q -p no:cacheprovider "${args[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$LOG"; then
  echo "sanitize.sh: sanitizer reports in $LOG" >&2
  exit 1
fi
exit "$rc"
