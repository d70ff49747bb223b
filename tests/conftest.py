"""Shared fixtures: random tiny checkpoints written by transformers itself (session-scoped), rng."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hf_oracle import CONFIGS, make_hf_checkpoint  # noqa: E402

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def hf_ckpt(tmp_path_factory):
    """hf_ckpt(name) -> directory of a random tiny checkpoint written by transformers."""
    made: dict[str, str] = {}

    def get(name: str, dtype: str = "float32") -> str:
        key = f"{name}-{dtype}"
        if key not in made:
            d = str(tmp_path_factory.mktemp(key))
            made[key] = make_hf_checkpoint(d, name, seed=sum(map(ord, name)), torch_dtype=dtype)
        return made[key]

    return get


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(path) -> transformers model (eager, fp32), cached."""
    from hf_oracle import load_hf

    cache: dict[str, object] = {}

    def get(path: str):
        if path not in cache:
            cache[path] = load_hf(path)
        return cache[path]

    return get


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


ALL_CONFIGS = list(CONFIGS)
