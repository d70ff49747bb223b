"""Defaults that hold up on a busy machine (issue 16 item 8; timings: benchmarks/bench_load.py,
analysis/cpu_performance.md): OpenMP workers wait passively unless the user chose a policy, and a
rank's default thread count never exceeds the cores it may run on."""

import os
import subprocess
import sys

import pytest

from lfm2engine import generate

PROBE = "import os, lfm2engine; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


@pytest.mark.parametrize("env, want", [
    ({}, "PASSIVE None"),
    ({"OMP_WAIT_POLICY": "active"}, "active None"),
    ({"GOMP_SPINCOUNT": "300000"}, "None 300000"),
])
def test_wait_policy_default_respects_the_users_choice(env, want):
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**e, **env})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == want.split()


@pytest.mark.parametrize("cpus, affinity, ranks, want", [
    (8, 8, 1, 8), (8, 8, 4, 2), (8, 1, 4, 1), (8, 3, 1, 3), (2, 2, 4, 1), (16, 4, 2, 4),
])
def test_default_threads_follow_cores_ranks_and_affinity(monkeypatch, cpus, affinity, ranks, want):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert generate.default_threads(ranks) == want
