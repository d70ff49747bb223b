"""A 20-token generate on a quiet and on a loaded machine, per OpenMP wait configuration.

Each run is a fresh `python -m lfm2engine.generate --prompt-ids ... --max-new-tokens 20 --json`
on the built-in model (its `seconds`: prefill + decode, loading excluded). "loaded" adds one CPU
hog per core (`yes > /dev/null`, same priority) for the duration of the run. Configurations and
quiet/loaded alternate run by run, so a machine shared with other work affects them alike; medians
are reported. Configurations (environment of the run):
  spin      GOMP_SPINCOUNT=300000: libgomp's own default (what the engine did before)
  passive   nothing set: the engine's default (OMP_WAIT_POLICY=PASSIVE, lfm2engine/__init__.py)
  threads1  --threads 1 (no team at all)
Writes analysis/out/bench_load.json. Usage: python benchmarks/bench_load.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "spin": ({"GOMP_SPINCOUNT": "300000"}, []),
    "passive": ({}, []),
    "threads1": ({}, ["--threads", "1"]),
}


def one_run(env_extra: dict, args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-m", "lfm2engine.generate", "--prompt-ids", "1,2,3,4,5,6,7,8",
                        "--max-new-tokens", "20", "--json", "-q", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return float(json.loads(r.stdout.strip().splitlines()[-1])["seconds"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "analysis", "out", "bench_load.json"))
    a = ap.parse_args()
    one_run({}, [])  # the built-in model exists and is in the page cache
    times = {(c, load): [] for c in CONFIGS for load in ("quiet", "loaded")}
    for rnd in range(a.rounds):
        for load in ("quiet", "loaded"):
            hogs = []
            if load == "loaded":
                hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 1)]
                time.sleep(0.2)
            try:
                for c, (env, args) in CONFIGS.items():
                    times[(c, load)].append(one_run(env, args))
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
        print(f"[bench_load] round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)
    rows = []
    for (c, load), ts in times.items():
        rows.append({"config": c, "load": load, "median_s": statistics.median(ts), "min_s": min(ts),
                     "max_s": max(ts), "runs": ts})
        print(f"{c:<9} {load:<7} median {statistics.median(ts):.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})")
    write_json(a.out, {"benchmark": "bench_load", "tokens": 20, "rounds": a.rounds, "cpus": os.cpu_count(),
                       "affinity": len(os.sched_getaffinity(0)), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
