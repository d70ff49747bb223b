"""Lost peers: a heartbeat ring, the launcher watch and the one-line failure report.

A rank that is killed, or whose host or link goes down, must end the whole job within seconds
with one line naming it: `[rank q/R] ParallelError: rank r on host H is gone: ...`, then
MPI_Abort with LOST_PEER_EXIT (3). Three mechanisms, started by comm.run_guarded when R > 1:

* Process death: under Open MPI's fault-tolerant mode (`mpirun --with-ft ulfm`), a collective
  with a dead peer raises MPI_ERR_PROC_FAILED instead of aborting inside the library, and
  `Comm.Get_failed()` names the dead rank (`describe_mpi_failure`). Every survivor learns of it;
  the lowest one reports, after revoking the communicator so that the others stay quiet. Without
  ULFM, Open MPI aborts on its own, and its message may blame the peer that saw the socket close.
* Silence (a host or its link is down, the process is stopped): TCP sends nothing back, so no
  collective ever fails. Each rank sends a tiny message every `period` seconds to rank r+1 on a
  private duplicate of the communicator, from a thread (mpi4py initialises MPI_THREAD_MULTIPLE),
  and watches rank r−1: silence for `timeout` seconds reports rank r−1. When a rank is done it
  sends BYE and keeps watching its predecessor until that one's BYE, so no rank finalizes while
  the one before it might still be lost. LFM2_HEARTBEAT="period,timeout" (default "0.5,3"; "0"
  turns it off). The heartbeat thread only wakes every `period`: no cost on the hot path.
* Orphans: a rank whose launcher (parent process) is gone exits: it must not outlive the job.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from ..errors import InputError

LOST_PEER_EXIT = 3
_TAG = 7207
_BYE = -1
_report_lock = threading.Lock()
_FAILED_WHY = "MPI reports it failed (its process ended, or its host or network link is down)"


def settings() -> tuple[float, float] | None:
    """(period, timeout) in seconds from LFM2_HEARTBEAT, None when turned off."""
    raw = os.environ.get("LFM2_HEARTBEAT", "0.5,3").strip()
    if raw in ("0", "off", ""):
        return None
    try:
        period, timeout = (float(x) for x in raw.split(","))
    except ValueError:
        raise InputError(f"LFM2_HEARTBEAT={raw!r}: expected 'period,timeout' in seconds (e.g. 0.5,3) or 0") from None
    if not (0 < period and 2 * period < timeout):
        raise InputError(f"LFM2_HEARTBEAT={raw!r}: need 0 < period and timeout > 2 × period")
    return period, timeout


def host_names(comm) -> list[str]:
    """Every rank's host name (MPI_Get_processor_name), in rank order. Collective, start-up only."""
    from mpi4py import MPI

    return comm.allgather(MPI.Get_processor_name())


def _revoked(comm) -> bool:
    """Has another rank revoked comm (ULFM)? Drives MPI's progress first, so that a revocation
    sent while this rank was not inside MPI is seen."""
    from mpi4py import MPI

    try:
        comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
    except Exception:  # a failed peer makes a wildcard probe raise; progress happened anyway
        pass
    try:
        return bool(comm.Is_revoked())
    except Exception:  # MPI without ULFM
        return False


def _quiet_exit() -> None:
    """Another rank has reported this failure and is ending the job: print nothing, and leave if
    the launcher has not ended this process within a few seconds."""
    time.sleep(5.0)
    os._exit(LOST_PEER_EXIT)


def report_lost(comm, hosts: list[str], lost: list[int], why: str, wait_for_lower: bool = False) -> None:
    """Print the one line naming the lost rank(s) and end the job: revoke the communicator (ULFM:
    the other survivors' collectives then fail with MPI_ERR_REVOKED and they stay quiet), then
    MPI_Abort. With wait_for_lower (every survivor saw the same failure) the lowest surviving rank
    reports; the others only do if it has not revoked within 2 s. Never returns."""
    rank, size = comm.Get_rank(), comm.Get_size()
    with _report_lock:
        if _revoked(comm):
            _quiet_exit()
        if wait_for_lower and any(r not in lost for r in range(rank)):
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                if _revoked(comm):
                    _quiet_exit()
                time.sleep(0.05)
        try:
            comm.Revoke()
        except Exception:  # MPI without ULFM: Abort alone ends the job
            pass
        who = ", ".join(f"rank {r} on host {hosts[r] if r < len(hosts) else '?'}" for r in lost) or "a peer"
        print(f"[rank {rank}/{size}] ParallelError: {who} is gone: {why}; ending the job", file=sys.stderr,
              flush=True)
        time.sleep(0.5)  # let the launcher forward the line: MPI_Abort's teardown drops unforwarded output
        comm.Abort(LOST_PEER_EXIT)
        os._exit(LOST_PEER_EXIT)  # Abort does not return; if it ever does, do not linger


def handle_mpi_error(comm, hosts: list[str], exc) -> None:
    """run_guarded's hook for an MPI exception on the main thread: when a peer died, or another
    rank has revoked the communicator after reporting one, end the job with one line and never
    return; return for any other error (a bug, reported with its traceback)."""
    if _revoked(comm):
        _quiet_exit()
    lost = describe_mpi_failure(comm, exc)
    if lost:
        report_lost(comm, hosts, lost, _FAILED_WHY, wait_for_lower=True)


def describe_mpi_failure(comm, exc, settle: float = 1.0) -> list[int] | None:
    """The dead ranks behind an MPI error, from fault-tolerant MPI (ULFM's Comm.Get_failed; a
    collective may report MPI_ERR_PROC_FAILED or a generic error when a peer died). Waits up to
    `settle` seconds for the failure notice to arrive. None: no peer is known dead (another error,
    or MPI without ULFM)."""
    from mpi4py import MPI

    if not isinstance(exc, MPI.Exception):
        return None
    t_end = time.monotonic() + settle
    while True:
        try:
            group = comm.Get_failed()
            world = comm.Get_group()
            lost = MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world)
            group.Free()
            world.Free()
        except (MPI.Exception, NotImplementedError):
            return None
        lost = sorted(int(r) for r in lost if r != MPI.UNDEFINED)
        if lost or time.monotonic() > t_end:
            return lost or None
        time.sleep(0.05)


class Heartbeat:
    """The ring heartbeat and the launcher watch of one rank (see the module docstring)."""

    def __init__(self, comm, hosts: list[str], period: float, timeout: float):
        self.world, self.hosts, self.period, self.timeout = comm, hosts, period, timeout
        self.comm = comm.Dup()  # heartbeats never match the engine's own messages
        rank, size = comm.Get_rank(), comm.Get_size()
        self.next, self.prev = (rank + 1) % size, (rank - 1) % size
        self.parent = os.getppid()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lfm2-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """This rank is done: say BYE to the next rank, wait for the previous rank's BYE (still
        watching it), then free the duplicate communicator. Call before MPI finalizes."""
        self._done.set()
        self._thread.join()
        self.comm.Free()

    def _run(self) -> None:
        from mpi4py import MPI

        inbox, beat = np.zeros(1, np.int64), np.zeros(1, np.int64)
        sends = []
        recv = self.comm.Irecv(inbox, source=self.prev, tag=_TAG)
        last_heard, prev_done, sent_bye, n = time.monotonic(), False, False, 0
        try:
            while not (sent_bye and prev_done):
                if os.getppid() != self.parent:  # the launcher is gone: nobody will end this process
                    print(f"[rank {self.world.Get_rank()}/{self.world.Get_size()}] ParallelError: the launcher "
                          f"(process {self.parent}) is gone; exiting", file=sys.stderr, flush=True)
                    os._exit(LOST_PEER_EXIT)
                if not sent_bye:
                    n += 1
                    beat[0] = _BYE if self._done.is_set() else n
                    sent_bye = beat[0] == _BYE
                    sends.append(self.comm.Isend(beat.copy(), dest=self.next, tag=_TAG))
                    sends = [r for r in sends if not r.Test()]
                while not prev_done and recv.Test():
                    last_heard = time.monotonic()
                    prev_done = int(inbox[0]) == _BYE
                    if not prev_done:
                        recv = self.comm.Irecv(inbox, source=self.prev, tag=_TAG)
                if _revoked(self.world):  # another rank reported a failure and is ending the job
                    _quiet_exit()
                if not prev_done and time.monotonic() - last_heard > self.timeout:
                    report_lost(self.world, self.hosts, [self.prev],
                                f"no heartbeat for {self.timeout:g} s (its process, host or network link is down)")
                self._done.wait(self.period) if not self._done.is_set() else time.sleep(self.period / 4)
            MPI.Request.Waitall(sends)
        except MPI.Exception as e:
            if _revoked(self.world):
                _quiet_exit()
            lost = describe_mpi_failure(self.comm, e)  # every survivor learns of a dead process
            report_lost(self.world, self.hosts, lost or [self.prev], _FAILED_WHY,
                        wait_for_lower=bool(lost))
