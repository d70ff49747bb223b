"""Type stub of lfm2engine._core, the C++ extension (csrc/bindings). Keep in sync with the
bindings: tests/test_ops_cpu.py::test_stub_lists_every_binding compares the names, and
test_op_tables_are_twins each op's argument names with the op tables (csrc/bindings/op_table.h).

Ops write their outputs (first arguments) in place and return None. Float arrays are C-contiguous
float32 unless noted; weights "w" may be float32, bfloat16 bits (uint16) or float16. Nothing is
converted implicitly: a wrong dtype raises TypeError, a wrong shape / layout ValueError, an
out-of-range index IndexError. Shape legend: csrc/core/shapes.h.
"""

from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray

_F32: TypeAlias = NDArray[np.float32]
_I32: TypeAlias = NDArray[np.int32]
_U8: TypeAlias = NDArray[np.uint8]
_Weight: TypeAlias = NDArray[np.float32] | NDArray[np.uint16] | NDArray[np.float16]

__version__: str

def has_cuda() -> bool:
    """True if the CUDA backend was compiled in (a GPU may still be absent)."""

def cpu_features() -> list[str]:
    """SIMD / matrix features this CPU and OS support, e.g. ['avx2', 'avx512f', 'amx-bf16']."""

def simd_level() -> str:
    """The SIMD path the CPU ops use now: 'avx512', 'avx2' or 'scalar'."""

def detected_simd_level() -> str:
    """The best SIMD path this CPU supports."""

def set_simd_level(level: str) -> None:
    """Caps the SIMD path at 'scalar', 'avx2' or 'avx512' (never above detected_simd_level())."""

def set_force_scalar(on: bool) -> None:
    """True: the scalar path (as LFM2_FORCE_SCALAR=1); False: the best available."""

def bf16_dot() -> bool:
    """True while the opt-in bf16 dot-product mode is on: bf16 weights times bf16-rounded
    activations with fp32 accumulation (AVX512_BF16 vdpbf16ps); LFM2_BF16_DOT=1 at load time."""

def bf16_dot_available() -> bool:
    """True if this CPU has AVX512_BF16 and the active SIMD path is avx512."""

def set_bf16_dot(on: bool) -> None:
    """Turn the bf16 dot-product mode on or off; ValueError where bf16_dot_available() is False."""

def quant_dot() -> bool:
    """True while the opt-in quant-dot mode is on: block-quantized weights (q8_0, q4_0, q4_k, q6_k)
    times activations quantized per 32 to int8, integer dot products, fp32 scaling
    (lfm2engine.quant_dot has the definition); LFM2_QUANT_DOT=1 at load time."""

def set_quant_dot(on: bool) -> None:
    """Turn the quant-dot mode on or off (every CPU has it: the SIMD paths give the same bits)."""

def quantize_activations(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """The quant-dot mode's activation quantization on the active SIMD path: (q int8 [M, K],
    d float32 [M, K / 32]) for float32 x [M, K], K a multiple of 32; ValueError otherwise."""

def set_num_threads(n: int) -> None:
    """Threads for the CPU ops; n <= 0 restores the default (OMP_NUM_THREADS or all cores)."""

def get_num_threads() -> int:
    """Threads the CPU ops use."""

class cpu:
    """Submodule _core.cpu: the CPU ops (SIMD + OpenMP, row-batch invariant)."""

    @staticmethod
    def gemm(out: _F32, x: _F32, w: _Weight) -> None:
        """out[T, N] = x[T, K] @ w[N, K].T, fp32 accumulation."""

    @staticmethod
    def embedding(out: _F32, table: _Weight, ids: _I32) -> None:
        """out[T, D] = table[V, D][ids[T]]; IndexError if an id is outside [0, V)."""

    @staticmethod
    def rmsnorm(out: _F32, x: _F32, w: _F32, eps: float) -> None:
        """out[R, D] = w[D] * x / sqrt(mean(x^2) + eps); out may be x."""

    @staticmethod
    def rope(x: _F32, positions: _I32, theta: float) -> None:
        """In place NeoX RoPE of x[T, H, Dh] at positions[T]."""

    @staticmethod
    def qkv_split(q: _F32, k: _F32, v: _F32, qkv: _F32) -> None:
        """q[T, H, Dh], k, v[T, Hkv, Dh] = the column blocks q | k | v of qkv[T, (H + 2 Hkv) Dh]."""

    @staticmethod
    def kv_write(k_cache: _F32, v_cache: _F32, k: _F32, v: _F32, seq: _I32, pos: _I32) -> None:
        """cache[B, Hkv, Smax, Dh][seq[t], :, pos[t]] = k[T, Hkv, Dh][t] (and v)."""

    @staticmethod
    def attention(
        out: _F32, q: _F32, k_cache: _F32, v_cache: _F32, seq: _I32, pos: _I32, mask: _U8 | None = None
    ) -> None:
        """out[T, H, Dh]: causal GQA attention over the cache rows 0..pos[t] of seq[t], or over
        the rows s with mask[T, Smax][t, s] != 0."""

    @staticmethod
    def shortconv(out: _F32, bcx: _F32, conv_w: _F32, state: _F32, seq: _I32, u_out: _F32 | None = None) -> None:
        """out[T, D] = C * conv_L(B * x) with bcx[T, 3D] = (B | C | x), conv_w[D, L],
        state[B, L-1, D] updated in place; u_out[T, D] receives B * x."""

    @staticmethod
    def swiglu(out: _F32, gu: _F32) -> None:
        """out[T, F] = silu(gu[T, 2F][:, :F]) * gu[:, F:]."""

    @staticmethod
    def moe_route(ids_out: _I32, w_out: _F32, logits: _F32, bias: _F32 | None, norm_topk: bool, scale: float) -> None:
        """Sigmoid top-K router: ids_out[T, K], w_out[T, K] from logits[T, E], bias[E]."""

    @staticmethod
    def moe_expert_rows(out: _F32, x: _F32, eids: _I32, w13: _Weight, w2: _Weight) -> None:
        """out[N, D] = expert_{eids[n]}(x[N, D][n]) unweighted (0 where eids < 0);
        w13[E, 2Fe, D] (gate | up), w2[E, D, Fe]."""

    @staticmethod
    def moe_experts(out: _F32, x: _F32, ids: _I32, w: _F32, w13: _Weight, w2: _Weight) -> None:
        """out[T, D] = sum_j w[T, K][t, j] * expert_{ids[t, j]}(x[t]) in slot order."""

    @staticmethod
    def argmax(out: _I32, logits: _F32) -> None:
        """out[T] = first index of the maximum of logits[T, V][t] (NaN wins)."""

    @staticmethod
    def convert(out: _Weight, x: _Weight) -> None:
        """Elementwise conversion between float32, bfloat16 bits (uint16) and float16."""

    class Model:
        """The fused single-rank layer loop over a model.Weights object's arrays (no copies);
        bit-identical to Engine.forward_tokens without trees, masks, skipped layers or a
        replaced MoE."""

        def __init__(self, config: object, weights: object) -> None: ...
        def forward(
            self,
            ids: _I32,
            seq: _I32,
            pos: _I32,
            k_caches: dict[int, _F32],
            v_caches: dict[int, _F32],
            conv_states: dict[int, _F32],
            u_hist: dict[int, _F32] | None,
            out_rows: _I32,
        ) -> _F32:
            """logits[R, V] of rows out_rows[R] after all layers over ids/seq/pos[T]; caches,
            conv states and u_hist [T, D] are written in place."""
        def set_profiling(self, on: bool) -> None:
            """Start (zeroing the sums) or stop (keeping them) the per-stage wall-clock profile of forward."""
        def profile(self) -> dict[str, float]:
            """{stage: seconds summed over the profiled forward calls, 'calls': count}."""

class cuda:
    """Submodule _core.cuda: the CUDA backend (csrc/cuda). Every op of _core.cpu exists here with
    the same name and argument order, taking cuda.Tensor arguments (None for optional ones) and
    returning at once; Tensor.to_numpy() and synchronize() wait. Bad indices found on the GPU raise
    IndexError at that next synchronization. Without CUDA compiled in, every name raises
    lfm2engine.errors.BackendError (a RuntimeError)."""

    class Tensor:
        """A C-contiguous array in GPU memory: float32, float16, bfloat16, int32 or uint8.
        Views (reshape, t[i], t[a:b] along dimension 0) share memory."""

        shape: tuple[int, ...]
        dtype: str  # "float32" | "float16" | "bfloat16" | "int32" | "uint8"
        ndim: int
        nbytes: int
        data_ptr: int

        @staticmethod
        def from_numpy(array: np.ndarray) -> "cuda.Tensor":
            """A device copy of `array` (uint16 = bf16 bits, bool = uint8); dtype kept."""

        @staticmethod
        def empty(shape: int | tuple[int, ...], dtype: str | np.dtype = "float32") -> "cuda.Tensor":
            """Uninitialized device tensor."""

        @staticmethod
        def zeros(shape: int | tuple[int, ...], dtype: str | np.dtype = "float32") -> "cuda.Tensor":
            """Zero-filled device tensor."""

        def to_numpy(self) -> np.ndarray:
            """Host copy (waits; raises pending device-side IndexError)."""

        def copy_(self, src: "np.ndarray | cuda.Tensor") -> "cuda.Tensor":
            """Overwrite with an array / tensor of the same shape and dtype."""

        def zero_(self) -> "cuda.Tensor":
            """Fill with zeros."""

        def reshape(self, *shape: int) -> "cuda.Tensor":
            """A view with another shape (one -1 inferred)."""

        def numel(self) -> int: ...
        def __len__(self) -> int: ...
        def __getitem__(self, key: int | slice) -> "cuda.Tensor": ...
        def __setitem__(self, key: int | slice, value: "np.ndarray | cuda.Tensor | int") -> None: ...

    class Graph:
        """CUDA Graph capture of op calls: begin(), ops (recorded, not run), end(); replay()."""

        ready: bool

        def begin(self) -> None: ...
        def end(self) -> None: ...
        def replay(self) -> None: ...

    @staticmethod
    def device_count() -> int:
        """Number of CUDA GPUs (0 without a GPU or driver)."""

    @staticmethod
    def device_info(device: int = 0) -> dict:
        """name, compute_capability, multiprocessors, total_memory, l2_cache, clock_khz,
        memory_clock_khz, memory_bus_width of one GPU."""

    @staticmethod
    def runtime_version() -> int:
        """CUDA runtime version built against, e.g. 13000."""

    @staticmethod
    def driver_version() -> int:
        """CUDA driver version, 0 without a driver."""

    @staticmethod
    def selftest(device: int = 0, n: int = 1048576) -> float:
        """Runs an axpy kernel on the GPU; returns the max abs error vs the host (0.0)."""

    @staticmethod
    def synchronize() -> None:
        """Wait for queued GPU work; raise a pending device-side index error."""

    @staticmethod
    def memory_allocated() -> int:
        """Bytes of device memory held by live tensors."""

    @staticmethod
    def memory_cached() -> int:
        """Bytes of freed device memory kept for reuse."""

    @staticmethod
    def empty_cache() -> None:
        """Return cached device memory to the driver."""

    @staticmethod
    def add(out: "cuda.Tensor", x: "cuda.Tensor") -> None:
        """out += x (float32, same shape)."""

    @staticmethod
    def time_ms(fn, warmup: int = 2, reps: int = 10, flush_l2: bool = True) -> list[float]:
        """GPU milliseconds of each timed call of fn() (cudaEvent pairs; optional L2 flush)."""

    @staticmethod
    def gemm(out: "cuda.Tensor", x: "cuda.Tensor", w: "cuda.Tensor") -> None:
        """out[T, N] = x[T, K] @ w[N, K].T; f16 w -> Tensor Cores (x rounded to f16), fp32 accumulation."""

    @staticmethod
    def embedding(out: "cuda.Tensor", table: "cuda.Tensor", ids: "cuda.Tensor") -> None:
        """out[T, D] = table[V, D][ids[T]]."""

    @staticmethod
    def rmsnorm(out: "cuda.Tensor", x: "cuda.Tensor", w: "cuda.Tensor", eps: float) -> None:
        """out[R, D] = w[D] * x / sqrt(mean(x^2) + eps); out may be x."""

    @staticmethod
    def rope(x: "cuda.Tensor", positions: "cuda.Tensor", theta: float) -> None:
        """In place NeoX RoPE of x[T, H, Dh] at positions[T]."""

    @staticmethod
    def qkv_split(q: "cuda.Tensor", k: "cuda.Tensor", v: "cuda.Tensor", qkv: "cuda.Tensor") -> None:
        """q[T, H, Dh], k, v[T, Hkv, Dh] = the column blocks q | k | v of qkv[T, (H + 2 Hkv) Dh]."""

    @staticmethod
    def kv_write(k_cache: "cuda.Tensor", v_cache: "cuda.Tensor", k: "cuda.Tensor", v: "cuda.Tensor",
                 seq: "cuda.Tensor", pos: "cuda.Tensor") -> None:
        """cache[B, Hkv, Smax, Dh][seq[t], :, pos[t]] = k[T, Hkv, Dh][t] (and v)."""

    @staticmethod
    def attention(out: "cuda.Tensor", q: "cuda.Tensor", k_cache: "cuda.Tensor", v_cache: "cuda.Tensor",
                  seq: "cuda.Tensor", pos: "cuda.Tensor", mask: "cuda.Tensor | None" = None) -> None:
        """out[T, H, Dh]: flash-style causal (or masked) GQA attention over the cache; H/Hkv <= 32."""

    @staticmethod
    def shortconv(out: "cuda.Tensor", bcx: "cuda.Tensor", conv_w: "cuda.Tensor", state: "cuda.Tensor",
                  seq: "cuda.Tensor", u_out: "cuda.Tensor | None" = None) -> None:
        """out[T, D] = C * conv_L(B * x); state[B, L-1, D] updated in place."""

    @staticmethod
    def swiglu(out: "cuda.Tensor", gu: "cuda.Tensor") -> None:
        """out[T, F] = silu(gu[T, 2F][:, :F]) * gu[:, F:]."""

    @staticmethod
    def moe_route(ids_out: "cuda.Tensor", w_out: "cuda.Tensor", logits: "cuda.Tensor",
                  bias: "cuda.Tensor | None", norm_topk: bool, scale: float) -> None:
        """Sigmoid top-K router: ids_out[T, K], w_out[T, K] from logits[T, E], bias[E]."""

    @staticmethod
    def moe_expert_rows(out: "cuda.Tensor", x: "cuda.Tensor", eids: "cuda.Tensor", w13: "cuda.Tensor",
                        w2: "cuda.Tensor") -> None:
        """out[N, D] = expert_{eids[n]}(x[n]) unweighted (0 where eids < 0)."""

    @staticmethod
    def moe_experts(out: "cuda.Tensor", x: "cuda.Tensor", ids: "cuda.Tensor", w: "cuda.Tensor",
                    w13: "cuda.Tensor", w2: "cuda.Tensor") -> None:
        """out[T, D] = sum_j w[t, j] * expert_{ids[t, j]}(x[t]) in slot order."""

    @staticmethod
    def argmax(out: "cuda.Tensor", logits: "cuda.Tensor") -> None:
        """out[T] = first index of the maximum of logits[T, V][t] (NaN wins)."""

    @staticmethod
    def convert(out: "cuda.Tensor", x: "cuda.Tensor") -> None:
        """Elementwise conversion between float32, bfloat16 and float16."""
