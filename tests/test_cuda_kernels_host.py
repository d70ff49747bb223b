"""The CUDA backend's block-quantized kernels checked on the CPU, so that they are tested where no
GPU exists (tests/test_ops_cuda.py runs them on a GPU). tests/cuda_host/check_kernels.cpp is
compiled with the host C++ compiler against the very kernel sources (csrc/cuda/quant.cuh,
gemm_quant_kernels.cuh, gemm.cuh) and tests/cuda_host/common.cuh standing in for CUDA (a thread
per CUDA thread; shared memory, barriers and the warp sum emulated). It checks the in-kernel
dequantization against core/quant.h bit for bit and every quantized GEMM kind, plain and
MoE-scheduled, against a float64 product. What this cannot see: the GPU's own behaviour (the
compiled PTX, occupancy, memory ordering beyond the barriers used) -- that is test_ops_cuda.py's.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, "tests", "cuda_host")
KERNEL_SOURCES = ("gemm.cuh", "quant.cuh", "gemm_quant_kernels.cuh")  # from csrc/cuda, unchanged


def compiler() -> str:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    pytest.fail("no C++ compiler (CXX, c++, g++ or clang++) on PATH; building lfm2engine needs one too")


def test_quantized_cuda_kernels_on_the_host(tmp_path):
    for f in KERNEL_SOURCES:
        shutil.copy(os.path.join(ROOT, "csrc", "cuda", f), tmp_path)
    shutil.copy(os.path.join(HOST, "common.cuh"), tmp_path)  # what the kernels' "common.cuh" resolves to
    exe = str(tmp_path / "check_kernels")
    build = subprocess.run([compiler(), "-std=c++20", "-O1", "-ffp-contract=off", "-Wno-unknown-pragmas", "-pthread",
                            "-I", str(tmp_path), "-I", os.path.join(ROOT, "csrc"),
                            os.path.join(HOST, "check_kernels.cpp"), "-o", exe],
                           capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([exe], capture_output=True, text=True, timeout=600, check=False)
    lines = run.stdout.splitlines()
    failed = [ln for ln in lines if ln.endswith("FAIL")]
    assert run.returncode == 0 and not failed and lines[-1] == "failures: 0", "\n".join(failed) or run.stdout[-3000:]
    cases = [ln for ln in lines if ln.endswith(": ok")]
    assert len(cases) == 76, f"expected 76 cases (4 types x (dequantization + 18 GEMM kind runs)), ran {len(cases)}"
