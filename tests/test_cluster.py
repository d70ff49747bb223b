"""Four simulated hosts (scripts/sim_cluster.sh: network namespaces on a private bridge, Open MPI
over TCP, no shared memory): every plan gives the single-rank bits, and a killed rank, a link
taken down, a shaped link and a host that never comes up each end (or only slow) the job within
a stated bound, with one line naming the host and rank, a non-zero exit and no output file.

Needs root, iproute2 and util-linux (skips with the reason otherwise); the loss test also needs
nftables where the kernel has no netem. Hosts are lt<pid>h0..3 on 10.213.1.0/24 (not the
defaults, so a cluster someone brought up by hand, or another test run, is left alone); `down`
runs even when a test fails. Each job is small (random checkpoints with awkward sizes); the bounds are generous for a
loaded 2-core machine, the measured times are in docs/multinode.md."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mpi_worker

pytestmark = pytest.mark.mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(ROOT, "scripts", "sim_cluster.sh")
RUN = os.path.join(ROOT, "scripts", "run.sh")
WORKER = os.path.join(ROOT, "tests", "mpi_worker.py")
# per test session, so that concurrent runs on one machine never touch each other's hosts (the
# subnet may repeat: each cluster has a bridge of its own, and no address outside the namespaces)
PREFIX, SUBNET = f"lt{os.getpid()}h", "10.213.1"
HOSTS = 4
JOB_TIMEOUT = 120  # any job; a hang fails the test instead of blocking the suite
KILL_BOUND = 15  # s from `kill -9` of one rank to the end of the job (measured ~1 s)
LINK_BOUND = 25  # s from `ip link set ... down` to the end: heartbeat 3 s + TCP give-up ~6 s + teardown (~10-13 s)
NEVER_UP_BOUND = 15  # s from launch to the end when a host is unreachable (measured 0.1-0.3 s)
LOST_LINE = re.compile(r"^\[rank (\d)/4\] ParallelError: rank (\d) on host (\S+) is gone: (.*); ending the job$", re.M)


def _no_namespaces() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' (Debian: apt-get install iproute2 util-linux)"
    probe = f"lfm2probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    return None


_WHY = _no_namespaces()
if _WHY:
    pytest.skip(_WHY, allow_module_level=True)
pytest.importorskip("mpi4py")


def sim_env(tmp: str, prefix: str = PREFIX, subnet: str = SUBNET) -> dict:
    env = dict(os.environ, LFM2_SIM_PREFIX=prefix, LFM2_SIM_SUBNET=subnet, LFM2_SIM_DIR=os.path.join(tmp, "sim"),
               LFM2_VENV=os.path.dirname(os.path.dirname(sys.executable)), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", NP=str(HOSTS))
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "LFM2_MPI", "MPIRUN"):
        env.pop(v, None)
    return env


def sim(env, *args, check=True, timeout=60):
    r = subprocess.run([SIM, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert r.returncode == 0, f"sim_cluster.sh {' '.join(args)}: {r.stderr[-2000:]}"
    return r


def leftovers(prefix: str) -> list[str]:
    """What a cluster with this prefix leaves behind: namespaces, links, /etc/netns entries."""
    ns = [ln.split()[0] for ln in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                 text=True).stdout.splitlines() if ln.startswith(prefix)]
    links = [ln for ln in subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                                         text=True).stdout.splitlines()
             if f" {prefix}" in ln or f" {prefix[:-1]}br0:" in ln]  # host links and the bridge
    return ns + links + glob.glob(f"/etc/netns/{prefix}*")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Four hosts for the module; `down` also when a test fails, then nothing may be left."""
    env = sim_env(str(tmp_path_factory.mktemp("cluster")))
    try:
        sim(env, "up", str(HOSTS))
        yield env
    finally:
        sim(env, "down", check=False)
    assert leftovers(PREFIX) == []


@pytest.fixture(autouse=True)
def healthy_links(request):
    """Every test starts and ends with all links up and unshaped (a failed test must not leak
    its fault into the next one)."""
    yield
    if "cluster" in request.fixturenames:
        env = request.getfixturevalue("cluster")
        for k in range(HOSTS):
            sim(env, "link", str(k), "up", check=False)
        sim(env, "shape", "all", "off", check=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The awkward random checkpoint (E=3 < 4 ranks, Fe=10), 8 prompts × 12 tokens, answers from
    the single-rank engine."""
    from lfm2engine.workload import write_inputs

    d = tmp_path_factory.mktemp("model")
    ckpt = mpi_worker.make_awkward_checkpoint(str(d / "ckpt"))
    ids = np.random.default_rng(11).integers(0, mpi_worker.AWKWARD["vocab_size"], size=(8, 12)).astype(np.int32)
    write_inputs(str(d / "in.bin"), ids)
    return ckpt, str(d / "in.bin")


def generate_args(model, out, plan="ep", extra=()):
    ckpt, inputs = model
    return ["--model", ckpt, "--inputs", inputs, "--outputs", str(out), "--plan", plan, "--batch-size", "2",
            "--threads", "1", *extra]


def single_rank(model, out, plan):
    """The same CLI as one plain process (no MPI): the reference bits."""
    env = sim_env(os.path.dirname(str(out)))
    r = subprocess.run([sys.executable, "-m", "lfm2engine.generate", *generate_args(model, out, plan), "-q"],
                       capture_output=True, text=True, env=env, timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    return open(out, "rb").read()


# ---------------------------------------------------------------------------------------- the cluster
def test_up_down_leave_nothing_behind_also_after_a_failed_run(tmp_path):
    pre = f"lu{os.getpid()}h"
    env = sim_env(str(tmp_path), prefix=pre, subnet="10.213.2")
    try:
        sim(env, "up", "2")
        sim(env, "up", "2")  # idempotent: made again from scratch
        st = sim(env, "status").stdout
        assert f"{pre}0  10.213.2.10/24  link UP" in st and f"{pre}1  10.213.2.11/24  link UP" in st
        names = subprocess.run(["ip", "netns", "exec", f"{pre}1", "getent", "hosts", f"{pre}0"], capture_output=True,
                               text=True).stdout
        assert names.split() == ["10.213.2.10", f"{pre}0"]  # names resolve inside the hosts
        r = subprocess.run([SIM, "mpirun", "-np", "2", "sh", "-c",
                            'hostname; [ "$OMPI_COMM_WORLD_RANK" = 0 ] || { sleep 1; exit 7; }'], capture_output=True,
                           text=True, env=env, timeout=JOB_TIMEOUT)
        assert r.returncode != 0 and sorted(r.stdout.split()) == [f"{pre}0", f"{pre}1"]  # one rank per host
    finally:
        sim(env, "down")
        sim(env, "down")  # idempotent
    assert leftovers(pre) == [] and not os.path.exists(env["LFM2_SIM_DIR"])  # state: hostfile, launcher
    assert sim(env, "status", check=False).returncode == 1


def test_every_plan_gives_the_single_rank_tokens_over_tcp(cluster, model):
    """tests/test_mpi.py's invariance job, on four hosts over TCP."""
    ckpt, _ = model
    r = subprocess.run([SIM, "mpirun", "-np", str(HOSTS), sys.executable, WORKER, "invariance", ckpt],
                       capture_output=True, text=True, env=cluster, timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert res["ranks"] == HOSTS
    (ck,) = res["result"]["checkpoints"]
    for kind in ("dp", "ep", "tp"):
        p = ck["plans"][kind]
        assert p["tokens"] == ck["ref"] and p["tokens_few"] == ck["ref_few"] and p["tokens_eos"] == ck["ref_eos"], kind
        if kind != "tp":
            assert p["logits_equal_ref"], f"{kind}: max diff {p['logits_max_diff']}"
    assert sum(res["result"]["tagged"]) > 0


@pytest.mark.parametrize("plan", ["dp", "ep", "tp"])
def test_run_sh_on_four_hosts_gives_the_single_rank_bits(cluster, model, tmp_path, plan):
    """`scripts/sim_cluster.sh run -- ./scripts/run.sh -v --plan P`: VALID, and outputs.bin is
    byte for byte the one-process file (tp too: its canonical slices make 1 and 4 ranks agree)."""
    from lfm2engine.workload import read_logits, write_logits

    want = single_rank(model, tmp_path / "one.bin", plan)
    answers = tmp_path / "answers.bin"
    write_logits(str(answers), read_logits(str(tmp_path / "one.bin")))
    out = tmp_path / "four.bin"
    r = subprocess.run([SIM, "run", "--", RUN, *generate_args(model, out, plan, ["--answers", str(answers), "-v"])],
                       capture_output=True, text=True, env=cluster, timeout=JOB_TIMEOUT, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "VALID: top-1 accuracy 100.0%" in r.stdout and "4 rank(s)" in r.stderr
    assert open(out, "rb").read() == want


# ---------------------------------------------------------------------------------------- faults
def rank_pid(host: str, deadline: float) -> int:
    """The engine process on a simulated host, once it runs."""
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True).stdout
        for pid in out.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"lfm2engine.generate" in fh.read():
                        return int(pid)
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no engine process appeared on {host}")


def long_job(cluster, model, out):
    """A job that would run for many minutes (100000 warm-up passes): only a fault ends it.
    Returns once every rank is past start-up (rank 0 logged `loaded ...`), with what it printed."""
    job = subprocess.Popen([SIM, "mpirun", "-np", str(HOSTS), sys.executable, "-m", "lfm2engine.generate",
                            *generate_args(model, out, "ep", ["-w", "100000"])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster)
    seen = []
    for line in job.stderr:
        seen.append(line)
        if "] loaded " in line:
            time.sleep(1.0)  # into the warm-up passes
            job.head = "".join(seen)
            return job
    job.wait()
    raise AssertionError("the job ended before loading its model: " + "".join(seen)[-3000:])


def end_of(job, t_fault):
    try:
        stdout, stderr = job.communicate(timeout=JOB_TIMEOUT)
        stderr = job.head + stderr
    except subprocess.TimeoutExpired:
        job.kill()
        job.communicate()
        raise AssertionError(f"the job outlived the fault by {JOB_TIMEOUT} s") from None
    return job.returncode, time.monotonic() - t_fault, stderr


def assert_one_line_naming(stderr, host_index):
    lines = LOST_LINE.findall(stderr)
    assert len(lines) == 1, stderr[-3000:]
    (reporter, lost, host, _why), = lines
    assert int(lost) == host_index and host == f"{PREFIX}{host_index}" and int(reporter) != host_index
    assert "Traceback" not in stderr, stderr[-3000:]


def assert_no_output(out):
    """Neither the output file nor a partial one (the atomic writer's `.tmp-*`): the directory,
    which held nothing else, is empty."""
    assert os.listdir(os.path.dirname(str(out))) == []


def test_a_rank_killed_mid_run_ends_the_job_naming_it(cluster, model, tmp_path):
    out = tmp_path / "out.bin"
    job = long_job(cluster, model, out)
    pid = rank_pid(f"{PREFIX}2", time.monotonic() + 10)
    assert job.poll() is None
    os.kill(pid, signal.SIGKILL)
    code, secs, stderr = end_of(job, time.monotonic())
    assert code != 0 and secs < KILL_BOUND, (code, secs, stderr[-3000:])
    assert_one_line_naming(stderr, 2)
    assert_no_output(out)


def test_a_link_taken_down_mid_run_ends_the_job_naming_the_host(cluster, model, tmp_path):
    out = tmp_path / "out.bin"
    job = long_job(cluster, model, out)
    assert job.poll() is None
    t0 = time.monotonic()
    sim(cluster, "link", "2", "down")
    code, secs, stderr = end_of(job, t0)
    assert code != 0 and secs < LINK_BOUND, (code, secs, stderr[-3000:])
    assert_one_line_naming(stderr, 2)
    assert_no_output(out)


def test_a_host_that_never_comes_up_ends_the_job_naming_it(cluster, model, tmp_path):
    out = tmp_path / "out.bin"
    sim(cluster, "link", "3", "down")
    t0 = time.monotonic()
    r = subprocess.run([SIM, "mpirun", "-np", str(HOSTS), sys.executable, "-m", "lfm2engine.generate",
                        *generate_args(model, out, "ep", ["-q"])], capture_output=True, text=True, env=cluster,
                       timeout=JOB_TIMEOUT)
    secs = time.monotonic() - t0
    assert r.returncode != 0 and secs < NEVER_UP_BOUND, (secs, r.stderr[-3000:])
    # the launch agent's line, as ssh's would be (Open MPI's banner naming the host may follow)
    assert re.search(rf"^ssh: connect to host {PREFIX}3: network is down .*; no rank can start there \(rank 3 of 4\)$",
                     r.stderr, re.M), r.stderr[-3000:]
    assert "ParallelError" not in r.stderr  # no rank ever started
    assert_no_output(out)


def test_the_agent_stops_a_launcher_that_keeps_waiting_for_an_unreachable_host(cluster):
    """Open MPI's prterun now and then keeps waiting after the agent reported an unreachable host
    (seen once in a full-suite run): the agent stops its launcher after a grace period. Here the
    launcher is a process that would wait 60 s."""
    sim(cluster, "link", "3", "down")
    agent = os.path.join(ROOT, "scripts", "sim_agent.sh")
    t0 = time.monotonic()
    launcher = f"import subprocess, time; subprocess.run([{agent!r}, {PREFIX + '3'!r}, 'true']); time.sleep(60)"
    r = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                       env=dict(cluster, LFM2_SIM_UNREACHABLE_GRACE="1"), timeout=JOB_TIMEOUT)
    secs = time.monotonic() - t0
    assert r.returncode == -signal.SIGTERM and secs < 10, (r.returncode, secs, r.stderr)
    assert f"connect to host {PREFIX}3: network is down" in r.stderr


def _shaping_counts(host: str) -> tuple[int, int]:
    """(packets dropped, packets the rate limit held back) on host: netem's counters, or the
    nftables rule's and tbf's."""
    nft = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "table", "inet", "lfm2sim"],
                         capture_output=True, text=True).stdout if shutil.which("nft") else ""
    tc = subprocess.run(["tc", "-netns", host, "-s", "qdisc", "show", "dev", "eth0"], capture_output=True,
                        text=True).stdout
    m = re.search(r"counter packets (\d+)", nft) or re.search(r"dropped (\d+)", tc)
    m2 = re.search(r"overlimits (\d+)", tc)
    return (int(m.group(1)) if m else 0), (int(m2.group(1)) if m2 else 0)


def test_a_slow_lossy_link_only_slows_the_job(cluster, model, tmp_path):
    """Host 2's outgoing traffic limited to 2 Mbit/s (tc tbf, or netem) with 3 % of its packets
    dropped (netem, or an nftables random drop; without either, rate only): the same bytes as a
    clean run, and the shaping did act (packets held back or dropped)."""
    clean = tmp_path / "clean.bin"
    r = subprocess.run([SIM, "mpirun", "-np", str(HOSTS), sys.executable, "-m", "lfm2engine.generate",
                        *generate_args(model, clean, "ep", ["-q"])], capture_output=True, text=True, env=cluster,
                       timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    lossy = sim(cluster, "shape", "2", "rate", "2mbit", "loss", "3%", check=False).returncode == 0
    if not lossy:  # no netem and no nftables: the rate limit alone
        sim(cluster, "shape", "2", "rate", "2mbit")
    shaped = tmp_path / "shaped.bin"
    r = subprocess.run([SIM, "mpirun", "-np", str(HOSTS), sys.executable, "-m", "lfm2engine.generate",
                        *generate_args(model, shaped, "ep", ["-q", "-w", "6"])],
                       capture_output=True, text=True, env=cluster, timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    drops, limited = _shaping_counts(f"{PREFIX}2")
    netem = "netem" in subprocess.run(["tc", "-netns", f"{PREFIX}2", "qdisc", "show", "dev", "eth0"],
                                      capture_output=True, text=True).stdout  # its rate keeps no overlimits
    assert (limited > 0 or netem) and (drops > 0 or not lossy), (drops, limited, "the shaping never acted")
    assert open(shaped, "rb").read() == open(clean, "rb").read()


def test_added_latency_only_slows_the_job(cluster, model, tmp_path):
    """2 ms each way on host 2 (needs the kernel's netem)."""
    r = sim(cluster, "shape", "2", "delay", "2ms", check=False)
    if r.returncode != 0:
        pytest.skip(f"latency cannot be added here: {r.stderr.strip()}")
    out = tmp_path / "slow.bin"
    r = subprocess.run([SIM, "mpirun", "-np", str(HOSTS), sys.executable, "-m", "lfm2engine.generate",
                        *generate_args(model, out, "ep", ["-q"])], capture_output=True, text=True, env=cluster,
                       timeout=JOB_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert open(out, "rb").read() == single_rank(model, tmp_path / "one.bin", "ep")


def test_a_bad_heartbeat_setting_is_a_clear_error(cluster, model, tmp_path):
    env = dict(cluster, LFM2_HEARTBEAT="5,1")
    r = subprocess.run([SIM, "mpirun", "-x", "LFM2_HEARTBEAT", "-np", "2", sys.executable, "-m", "lfm2engine.generate",
                        *generate_args(model, tmp_path / "o.bin", "ep", ["-q"])], capture_output=True, text=True,
                       env=env, timeout=JOB_TIMEOUT)
    assert r.returncode == 2
    assert re.search(r"\[rank [01]/2\] InputError: LFM2_HEARTBEAT='5,1': need 0 < period and timeout > 2 × period",
                     r.stderr)

