"""The tests' own skip policy (issue 16, item 10): a broken C++ core, or a CUDA-less build on a GPU
host, FAILS in CI, under scripts/test.sh and wherever a GPU is visible; it may skip elsewhere."""

import sys

import pytest

import helpers


@pytest.fixture
def broken_core(monkeypatch):
    import lfm2engine

    monkeypatch.setitem(sys.modules, "lfm2engine._core", None)  # the import now raises ImportError
    monkeypatch.delattr(lfm2engine, "_core", raising=False)
    for v in ("CI", "LFM2_REQUIRE_CORE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(helpers, "gpu_visible", lambda: False)
    return monkeypatch


@pytest.mark.parametrize("env", [{"CI": "true"}, {"LFM2_REQUIRE_CORE": "1"}, "gpu"])
def test_broken_core_fails_where_required(broken_core, env):
    if env == "gpu":
        broken_core.setattr(helpers, "gpu_visible", lambda: True)
    else:
        for k, v in env.items():
            broken_core.setenv(k, v)
    with pytest.raises(pytest.fail.Exception, match="does not import .* fails instead of skipping"):
        helpers.import_core()


def test_broken_core_skips_elsewhere(broken_core):
    with pytest.raises(pytest.skip.Exception, match="not built"):
        helpers.import_core()


class NoCuda:
    @staticmethod
    def has_cuda():
        return False


def test_cuda_less_build_fails_on_a_gpu_host(monkeypatch):
    monkeypatch.setattr(helpers, "gpu_visible", lambda: True)
    with pytest.raises(pytest.fail.Exception, match="built without CUDA.*/dev/nvidia"):
        helpers.cuda_missing(NoCuda)
    monkeypatch.setattr(helpers, "gpu_visible", lambda: False)
    assert "built without CUDA" in helpers.cuda_missing(NoCuda)


def test_scripts_test_sh_requires_the_core():
    import os

    with open(os.path.join(os.path.dirname(__file__), "..", "scripts", "test.sh")) as f:
        assert 'export LFM2_REQUIRE_CORE="${LFM2_REQUIRE_CORE:-1}"' in f.read()
