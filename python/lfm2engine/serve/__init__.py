"""OpenAI-compatible HTTP serving with continuous batching (docs/serving.md).

Modules, one concern each: protocol (wire format, validation, errors), chat (Jinja2 chat
templates), request (one request's state and text), scheduler (continuous batching, the engine
thread), steps (one step on every MPI rank), metrics (Prometheus text), app (the FastAPI
routes), server (assembly, uvicorn), __main__ (the CLI). Needs the `serve` extra:
pip install lfm2engine[serve].
"""
