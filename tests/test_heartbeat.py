"""The lost-peer heartbeat (lfm2engine/parallel/heartbeat.py) without network namespaces: its
setting, and a rank that falls silent (SIGSTOP: alive, holding its sockets, sending nothing, as
behind a cut link) in a plain `mpirun --oversubscribe` job, named within a bound. The network
faults themselves are in tests/test_cluster.py (root only)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import mpi_worker
from lfm2engine.errors import InputError
from lfm2engine.parallel import heartbeat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SILENT_BOUND = 20  # s from SIGSTOP to the end of the job, with a 3 s heartbeat timeout (measured ~4 s)


@pytest.mark.parametrize("raw, want", [(None, (0.5, 3.0)), ("0", None), ("off", None), ("0.2,1", (0.2, 1.0))])
def test_settings(monkeypatch, raw, want):
    if raw is None:
        monkeypatch.delenv("LFM2_HEARTBEAT", raising=False)
    else:
        monkeypatch.setenv("LFM2_HEARTBEAT", raw)
    assert heartbeat.settings() == want


@pytest.mark.parametrize("raw", ["5", "a,b", "1,2", "0,5", "-1,5", "1,2,3"])
def test_bad_settings_are_input_errors(monkeypatch, raw):
    monkeypatch.setenv("LFM2_HEARTBEAT", raw)
    with pytest.raises(InputError, match="LFM2_HEARTBEAT"):
        heartbeat.settings()


def wait_until_loaded(job) -> str:
    """Read the job's stderr up to rank 0's `loaded ...` line (every rank is then past start-up,
    in the run); returns what was read."""
    seen = []
    for line in job.stderr:
        seen.append(line)
        if "] loaded " in line:
            return "".join(seen)
    raise AssertionError("the job ended before loading its model: " + "".join(seen)[-3000:])


def _mpirun():
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return local if os.access(local, os.X_OK) else None


def _rank_pid(job_pid: int, rank: int, deadline: float) -> int:
    """The pid of MPI rank `rank` among the descendants of job_pid (from its environment)."""
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = fh.read().split(b"\0")
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if b"lfm2engine.generate" in cmd and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and \
                    f"LFM2_TEST_JOB={job_pid}".encode() in env:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} did not start")


@pytest.mark.mpi
@pytest.mark.skipif(_mpirun() is None, reason="no mpirun in the venv (pip install -e .[mpi-wheel])")
def test_a_silent_rank_is_named_by_its_successor(tmp_path):
    pytest.importorskip("mpi4py")
    from lfm2engine.workload import write_inputs

    ckpt = mpi_worker.make_awkward_checkpoint(str(tmp_path / "ckpt"))
    write_inputs(str(tmp_path / "in.bin"), np.random.default_rng(2).integers(0, 61, size=(6, 8)).astype(np.int32))
    tag = str(os.getpid())
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               LFM2_HEARTBEAT="0.25,3", LFM2_TEST_JOB=tag)
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "LFM2_MPI"):
        env.pop(v, None)
    out = tmp_path / "out.bin"
    job = subprocess.Popen([_mpirun(), "--oversubscribe", "-np", "3", sys.executable, "-m", "lfm2engine.generate",
                            "--model", ckpt, "--inputs", str(tmp_path / "in.bin"), "--outputs", str(out),
                            "--plan", "ep", "--threads", "1", "-w", "100000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    pid = None
    try:
        pid = _rank_pid(int(tag), 1, time.monotonic() + 60)
        head = wait_until_loaded(job)  # the heartbeat runs from start-up on; the model is loaded
        assert job.poll() is None
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _, stderr = job.communicate(timeout=120)
        stderr = head + stderr
        secs = time.monotonic() - t0
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert job.returncode != 0 and secs < SILENT_BOUND, (job.returncode, secs, stderr[-3000:])
    lines = re.findall(r"^\[rank (\d)/3\] ParallelError: rank (\d) on host (\S+) is gone: (.*); ending the job$",
                       stderr, re.M)
    assert lines == [("2", "1", socket.gethostname(), "no heartbeat for 3 s (its process, host or network link is "
                                                       "down)")], (job.returncode, secs, stderr[-3000:])
    assert not out.exists()
