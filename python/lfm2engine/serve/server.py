"""Putting a server together: the engine's step executor, the scheduler, the app, and uvicorn
on a socket bound here (port 0 picks a free port; the bound address is printed and returned).

`Server` is the one assembly used by the CLI (`python -m lfm2engine.serve`, rank 0), the tests
and the benchmark: it owns the scheduler thread and, with `start_in_thread`, runs uvicorn in a
background thread too (the CLI runs it in the main thread).
"""

from __future__ import annotations

import os
import signal
import socket
import threading

from .. import log
from ..errors import InputError
from ..models import side_dir
from ..parallel.comm import SelfComm
from ..parallel.plan import ParallelPlan
from ..tokenizer import load_tokenizer
from .app import ServerState, create_app
from .chat import ChatTemplate
from .metrics import Metrics
from .scheduler import Scheduler
from .steps import StepExecutor, check_slots


def _tokenizer(model_dir: str):
    """The model's text tokenizer, or None: then prompts come as token ids (a GGUF file whose
    metadata holds no tokenizer lfm2engine can build serves token ids, with a warning)."""
    try:
        return load_tokenizer(model_dir)
    except InputError as e:
        log.warning(f"no text tokenizer ({e}); the server takes prompts as token ids")
        return None


class Server:
    def __init__(self, engine, model_dir: str, executor: StepExecutor | None = None, *, max_batch: int = 32,
                 max_context: int = 2048, step_tokens: int = 256, max_queue: int = 256, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, max_body_bytes: int = 8 << 20, log_level: str = "warning"):
        if executor is None:
            check_slots(max_batch, max_context, engine)
            plan = getattr(engine, "parallel_plan", None) or ParallelPlan("dp", 1, 0)
            executor = StepExecutor(engine, SelfComm(), plan, max_batch, max_context)
        self.executor = executor
        self.metrics = Metrics()
        self.scheduler = Scheduler(executor, max_queue=max_queue, step_tokens=step_tokens, metrics=self.metrics)
        name = model_name or os.path.basename(os.path.normpath(model_dir))
        self.state = ServerState(engine.config, name, self.scheduler, self.metrics, _tokenizer(model_dir),
                                 ChatTemplate.from_model_dir(side_dir(model_dir)), max_body_bytes)
        self.app = create_app(self.state)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.log_level = log_level
        self.uvicorn = None
        self.http_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def _uvicorn(self):
        import uvicorn

        cfg = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, timeout_graceful_shutdown=5)
        self.uvicorn = uvicorn.Server(cfg)
        return self.uvicorn

    def serve(self) -> None:
        """Run the scheduler thread and uvicorn in this (main) thread until SIGINT / SIGTERM; then
        stop both and return. uvicorn re-raises the signal that stopped it against the handlers it
        found; the ones set here only note it, so the scheduler still shuts down (and, under MPI,
        tells the other ranks to stop) and the process exits normally."""
        noted = []
        prev = {sig: signal.signal(sig, lambda s, _f: noted.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.scheduler.start()
        try:
            self._uvicorn().run(sockets=[self.sock])
        finally:
            self.scheduler.shutdown()
            self.sock.close()
            for sig, h in prev.items():
                signal.signal(sig, h)

    def start_in_thread(self) -> "Server":
        """Scheduler and uvicorn in background threads (tests, benchmarks); stop() ends them."""
        self.scheduler.start()
        srv = self._uvicorn()
        self.http_thread = threading.Thread(target=srv.run, kwargs={"sockets": [self.sock]}, name="lfm2-http",
                                            daemon=True)
        self.http_thread.start()
        return self

    def stop(self) -> None:
        if self.uvicorn is not None:
            self.uvicorn.should_exit = True
        if self.http_thread is not None:
            self.http_thread.join(30)
        self.scheduler.shutdown()
        self.sock.close()

    def __enter__(self):
        return self.start_in_thread()

    def __exit__(self, *exc):
        self.stop()
