"""A host emulation of `_core.cuda` for testing the cuda backend's Python side without a GPU.

Tensor wraps a NumPy array (views share memory, like device views); every op runs the CPU op
of the same name on the wrapped arrays; Graph records the op calls made between begin() and
end() instead of running them, and replay() runs the recording, as a CUDA Graph does. It checks
the calls the backend makes (names, argument kinds, shapes, the capture discipline), not the
GPU kernels (tests/test_ops_cuda.py does that where a GPU exists).
"""

from __future__ import annotations

import numpy as np
from lfm2engine.backends import get_backend
from lfm2engine.quant import QTYPES

# dtype names as _core.cuda.Tensor spells them; block types are lfm2engine.quant's block dtypes and keep
# NumPy's block shape [..., K / block], as the real Tensor does
_DT = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int32": np.int32, "uint8": np.uint8,
       **{name: q.dtype for name, q in QTYPES.items()}}
_NAME = {np.dtype(v): k for k, v in _DT.items()}
_capture: list | None = None  # the recording of the graph being captured


class Tensor:
    def __init__(self, a: np.ndarray):
        self.a = a

    @staticmethod
    def from_numpy(a):
        if _capture is not None:
            raise RuntimeError("host copies are not allowed while capturing a graph")
        return Tensor(np.array(a, copy=True, order="C"))

    @staticmethod
    def empty(shape, dtype="float32"):
        return Tensor(np.empty(shape, _dtype(dtype, shape)))

    @staticmethod
    def zeros(shape, dtype="float32"):
        return Tensor(np.zeros(shape, _dtype(dtype, shape)))

    def to_numpy(self):
        if _capture is not None:
            raise RuntimeError("host copies are not allowed while capturing a graph")
        return self.a.copy()

    def copy_(self, src):
        if _capture is not None:
            raise RuntimeError("host copies are not allowed while capturing a graph")
        src = src.a if isinstance(src, Tensor) else src
        if isinstance(src, np.ndarray) and src.dtype != self.a.dtype:  # the real Tensor's error types
            raise TypeError(f"copy_: source dtype {src.dtype} differs from the tensor's {self.a.dtype}")
        if isinstance(src, np.ndarray) and src.shape != self.a.shape:
            raise ValueError(f"copy_: source shape {src.shape} differs from the tensor's {self.a.shape}")
        self.a[...] = src
        return self

    def zero_(self):
        self.a[...] = 0
        return self

    def reshape(self, *shape):
        return Tensor(self.a.reshape(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape))

    def __getitem__(self, key):
        if not isinstance(key, (int, np.integer, slice)) or (isinstance(key, slice) and key.step not in (None, 1)):
            raise TypeError("cuda.Tensor: index dimension 0 with an int or a contiguous slice")
        return Tensor(self.a[key])

    def __len__(self):
        return self.a.shape[0]

    @property
    def shape(self):
        return self.a.shape

    @property
    def ndim(self):
        return self.a.ndim

    @property
    def nbytes(self):
        return self.a.nbytes

    def numel(self):
        return self.a.size

    @property
    def dtype(self):
        return _NAME[self.a.dtype]


def _dtype(d, shape) -> np.dtype:
    """A dtype argument of Tensor.empty / zeros: a name of _DT or a NumPy dtype (as the real binding)."""
    dt = np.dtype(_DT[d]) if isinstance(d, str) and d in _DT else np.dtype(d)
    if dt.names is not None and isinstance(shape, (tuple, list)) and len(shape) == 0:
        raise ValueError(f"cuda.Tensor: a {_NAME.get(dt, dt)} tensor needs at least one dimension")
    return dt


class Graph:
    def __init__(self):
        self.calls = None

    def begin(self):
        global _capture
        _capture = []

    def end(self):
        global _capture
        self.calls, _capture = _capture, None

    def replay(self):
        for fn, args in self.calls:
            fn(*args)

    @property
    def ready(self):
        return self.calls is not None


def _host(x):
    if x is None or isinstance(x, (bool, int, float)):
        return x
    if not isinstance(x, Tensor):
        raise TypeError(f"a cuda op got a {type(x).__name__}, not a cuda.Tensor")
    return x.a


def _op(fn):
    def call(*args):
        if _capture is not None:
            _capture.append((call_now, args))
        else:
            call_now(*args)

    def call_now(*args):
        fn(*[_host(a) for a in args])

    return call


def _add(out, x):
    out += x


_CPU = get_backend("cpu").ops
for _name in ("gemm", "embedding", "rmsnorm", "rope", "kv_write", "attention", "shortconv", "swiglu", "moe_route",
              "moe_expert_rows", "moe_experts", "argmax", "convert", "qkv_split"):
    globals()[_name] = _op(getattr(_CPU, _name))
add = _op(_add)


def device_count():
    return 1


def empty_cache():
    pass
