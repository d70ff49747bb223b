"""The engine model on one NVIDIA GPU: model.py's Engine / Session over `_core.cuda` ops.

Same blocks, same order, same public API as model.py (logits, generate, session / prefill /
forward / decode / truncate), but weights, KV caches and conv states are `_core.cuda.Tensor`s
uploaded once; per forward call only the token ids, sequence slots and positions go up (one
int32 upload) and the requested logits come down (greedy `generate` brings down only the argmax
ids). Decode-shaped calls (one new token per sequence) are captured as a CUDA Graph the second
time a batch size is seen and replayed afterwards (LFM2_CUDA_GRAPHS=0 turns this off).

Precision by dtype: "float32" runs every GEMM on CUDA cores in fp32; "float16" keeps the
projection weights in f16 and runs their GEMMs on the Tensor Cores (activations rounded to f16 per
GEMM, fp32 accumulation); "bfloat16" keeps bf16 weights and widens them on CUDA cores. Norms,
conv taps, router and expert_bias stay fp32 on every dtype, as in model.Weights.
Not here: tree verification (forward_tree / commit_tree: use device="cpu") and multi-GPU plans.

    from lfm2engine import cuda_model
    eng = cuda_model.from_pretrained(path, dtype="float16")     # or Engine.from_pretrained(path, device="cuda")
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .checkpoint import Checkpoint
from .config import LFM2Config
from .errors import BackendError, InputError
from .model import DTYPES, Engine, Session


def _cuda_core():
    try:
        from . import _core
    except ImportError as e:  # pragma: no cover - depends on the build
        raise BackendError(f"the compiled extension lfm2engine._core is not available ({e}); "
                           "hint: install the package with `pip install -e .`") from None
    if not _core.has_cuda():
        raise BackendError("device='cuda': lfm2engine was built without CUDA (no nvcc at build time); rebuild with "
                           "LFM2_CUDA=ON, or use device='cpu'")
    if _core.cuda.device_count() == 0:
        raise BackendError("device='cuda': no CUDA GPU is visible (_core.cuda.device_count() == 0); use device='cpu'")
    return _core


class DeviceLayer:
    """One layer's weights on the GPU. Attention keeps q/k/v projections apart (three GEMMs write
    contiguous q, k, v: no column split on the device); experts are stacked [E, 2Fe, D] / [E, D, Fe]."""

    __slots__ = (
        "conv_w",
        "ew2",
        "ew13",
        "expert_bias",
        "ffn_norm",
        "gate",
        "in_proj",
        "k_norm",
        "op_norm",
        "out_proj",
        "q_norm",
        "w2",
        "w13",
        "wk",
        "wo",
        "wq",
        "wv",
    )

    def __init__(self):
        for s in self.__slots__:
            setattr(self, s, None)


class DeviceWeights:
    """All weights uploaded once, in the engine's storage dtype (see the module docstring)."""

    def __init__(self, ck: Checkpoint, dtype: str, verbose: bool = False):
        core = _cuda_core()
        T = core.cuda.Tensor
        cfg = ck.config
        self.dtype = dtype
        if dtype == "float32":
            proj = lambda n: np.ascontiguousarray(ck.f32(n), dtype=np.float32)
        elif dtype == "bfloat16":
            proj = lambda n: np.ascontiguousarray(ck.bf16(n))
        else:
            proj = lambda n: np.ascontiguousarray(ck.f32(n).astype(np.float16))
        f32 = lambda n: T.from_numpy(np.ascontiguousarray(ck.f32(n), dtype=np.float32))
        up = lambda n: T.from_numpy(proj(n))

        def stack(names, lead=()):  # rows of `names` (each [r, in]) one after another: [*lead, rows, in]
            shapes = [tuple(ck.refs[n].shape) for n in names]
            rows = sum(s[0] for s in shapes) // max(1, int(np.prod(lead)))
            t = T.empty((*lead, rows, shapes[0][1]), dtype)
            flat = t.reshape(-1, shapes[0][1])
            r = 0
            for n in names:
                a = proj(n)
                flat[r : r + a.shape[0]] = a
                r += a.shape[0]
            return t

        self.embed = up("model.embed_tokens.weight")  # [V, D]
        self.head = self.embed if cfg.tie_word_embeddings else up("lm_head.weight")  # [V, D]
        self.final_norm = f32("model.embedding_norm.weight")
        self.layers: list[DeviceLayer] = []
        t0, last = time.time(), 0
        d = cfg.hidden_size
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            lw = DeviceLayer()
            lw.op_norm, lw.ffn_norm = f32(p + "operator_norm.weight"), f32(p + "ffn_norm.weight")
            if cfg.is_attention_layer(i):
                a = p + "self_attn."
                lw.wq, lw.wk, lw.wv = up(a + "q_proj.weight"), up(a + "k_proj.weight"), up(a + "v_proj.weight")
                lw.wo = up(a + "out_proj.weight")
                lw.q_norm, lw.k_norm = f32(a + "q_layernorm.weight"), f32(a + "k_layernorm.weight")
            else:
                c = p + "conv."
                lw.in_proj, lw.out_proj = up(c + "in_proj.weight"), up(c + "out_proj.weight")
                conv = np.ascontiguousarray(ck.f32(c + "conv.weight"), dtype=np.float32)
                lw.conv_w = T.from_numpy(np.ascontiguousarray(conv.reshape(d, cfg.conv_L_cache)))  # [D, 1, L] -> [D, L]
            f = p + "feed_forward."
            if cfg.is_moe_layer(i):
                e_ = cfg.num_experts
                lw.gate = f32(f + "gate.weight")  # [E, D]
                lw.expert_bias = f32(f + "expert_bias") if cfg.use_expert_bias else None
                lw.ew13 = stack([f"{f}experts.{e}.w{j}.weight" for e in range(e_) for j in (1, 3)], (e_,))  # [E, 2Fe, D]
                lw.ew2 = stack([f"{f}experts.{e}.w2.weight" for e in range(e_)], (e_,))  # [E, D, Fe]
            else:
                lw.w13 = stack([f + "w1.weight", f + "w3.weight"])  # [2F, D] = gate | up (F from the file)
                lw.w2 = up(f + "w2.weight")
            self.layers.append(lw)
            pct = 100 * (i + 1) // cfg.num_hidden_layers
            if verbose and pct >= last + 25:
                last = pct
                print(f"[lfm2engine] uploading weights to the GPU: {pct}% ({time.time() - t0:.1f} s)", file=sys.stderr,
                      flush=True)


class CudaEngine(Engine):
    """model.Engine on one GPU. Inherits validation, logits() and derive(); the blocks and the
    layer loop run `_core.cuda` ops on device tensors."""

    def __init__(self, cfg: LFM2Config, weights: DeviceWeights, fingerprint: str = ""):
        # Engine.__init__ binds the CPU ops; set the same attributes for the device instead.
        self.config = cfg
        self.w = weights
        self.device = "cuda"
        self.dtype = weights.dtype
        self.fingerprint = fingerprint
        self._core = _cuda_core()
        self.ops = self._core.cuda
        self.Tensor = self._core.cuda.Tensor
        self.moe_impl = self.local_moe
        self.skip_layers: frozenset[int] = frozenset()
        self.use_graphs = os.environ.get("LFM2_CUDA_GRAPHS", "1") != "0"

    @classmethod
    def from_pretrained(cls, path, dtype: str = "float32", device: str = "cuda", num_threads=None,
                        verbose: bool = False) -> CudaEngine:
        if device != "cuda":
            raise InputError(f"CudaEngine runs on device='cuda', not {device!r}")
        return from_pretrained(path, dtype, verbose=verbose)

    def session(self, batch_size: int, capacity: int, rollback: int = 0) -> CudaSession:
        return CudaSession(self, batch_size, capacity, rollback)

    def _empty(self, *shape, dtype="float32"):
        return self.Tensor.empty(shape, dtype)

    # ------------------------------------------------------------------ blocks (reference order)
    def local_moe(self, i: int, h):
        """MoE FFN of layer i: route -> grouped experts -> combine. h [T, D] on the device."""
        lw = self.w.layers[i]
        ids, wts = self.route(i, h)
        y = self._empty(*h.shape)
        self.ops.moe_experts(y, h, ids, wts, lw.ew13, lw.ew2)
        return y

    def route(self, i: int, h):
        cfg, lw, ops = self.config, self.w.layers[i], self.ops
        t_ = h.shape[0]
        logits = self._empty(t_, cfg.num_experts)
        ops.gemm(logits, h, lw.gate)
        ids = self._empty(t_, cfg.num_experts_per_tok, dtype="int32")
        wts = self._empty(t_, cfg.num_experts_per_tok)
        ops.moe_route(ids, wts, logits, lw.expert_bias, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        return ids, wts

    def dense_ffn(self, i: int, h):
        lw, ops = self.w.layers[i], self.ops
        t_, f = h.shape[0], lw.w2.shape[1]
        gu = self._empty(t_, 2 * f)
        ops.gemm(gu, h, lw.w13)  # [T, 2F]
        a = self._empty(t_, f)
        ops.swiglu(a, gu)
        y = self._empty(*h.shape)
        ops.gemm(y, a, lw.w2)
        return y

    def attention_block(self, i: int, h, st: CudaSession, seq, pos, mask=None, rope_pos=None):
        cfg, lw, ops = self.config, self.w.layers[i], self.ops
        t_, nh, nkv, dh = h.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = self._empty(t_, nh * dh), self._empty(t_, nkv * dh), self._empty(t_, nkv * dh)
        ops.gemm(q, h, lw.wq)
        ops.gemm(k, h, lw.wk)
        ops.gemm(v, h, lw.wv)
        qn, kn = q.reshape(t_ * nh, dh), k.reshape(t_ * nkv, dh)  # per-head norms: [T, H Dh] -> [T H, Dh]
        ops.rmsnorm(qn, qn, lw.q_norm, cfg.norm_eps)
        ops.rmsnorm(kn, kn, lw.k_norm, cfg.norm_eps)
        q3, k3, v3 = q.reshape(t_, nh, dh), k.reshape(t_, nkv, dh), v.reshape(t_, nkv, dh)
        rp = pos if rope_pos is None else rope_pos
        ops.rope(q3, rp, cfg.rope_theta)
        ops.rope(k3, rp, cfg.rope_theta)
        ops.kv_write(st.k[i], st.v[i], k3, v3, seq, pos)
        o = self._empty(t_, nh, dh)
        ops.attention(o, q3, st.k[i], st.v[i], seq, pos, mask)
        y = self._empty(*h.shape)
        ops.gemm(y, o.reshape(t_, nh * dh), lw.wo)
        return y

    def shortconv_block(self, i: int, h, st: CudaSession, seq, u_out=None, parents=None):
        if parents is not None:
            raise BackendError("tree verification is not implemented on device='cuda'; use device='cpu'")
        lw, ops = self.w.layers[i], self.ops
        t_, d = h.shape
        bcx = self._empty(t_, 3 * d)
        ops.gemm(bcx, h, lw.in_proj)  # [T, 3D] = B | C | x
        z = self._empty(t_, d)
        ops.shortconv(z, bcx, lw.conv_w, st.conv[i], seq, u_out)
        y = self._empty(t_, d)
        ops.gemm(y, z, lw.out_proj)
        return y

    def forward_device(self, st: CudaSession, ids, seq, pos, rows=None, mask=None, u_dev=None, rope_pos=None):
        """The layer loop on device tensors: ids, seq, pos [T] int32 -> logits [R, V] f32 of the
        rows `rows` [R] int32 (None: every row). Only enqueues work (CUDA-Graph capturable)."""
        cfg, w, ops = self.config, self.w, self.ops
        t_, d = ids.shape[0], cfg.hidden_size
        x = self._empty(t_, d)
        ops.embedding(x, w.embed, ids)
        h = self._empty(t_, d)
        for i, lw in enumerate(w.layers):
            if i in self.skip_layers:
                continue
            ops.rmsnorm(h, x, lw.op_norm, cfg.norm_eps)
            if cfg.is_attention_layer(i):
                ops.add(x, self.attention_block(i, h, st, seq, pos, mask, rope_pos))
            else:
                ops.add(x, self.shortconv_block(i, h, st, seq, None if u_dev is None else u_dev[i]))
            ops.rmsnorm(h, x, lw.ffn_norm, cfg.norm_eps)
            ops.add(x, self.moe_impl(i, h) if cfg.is_moe_layer(i) else self.dense_ffn(i, h))
        if rows is None:
            xl = x
        else:
            xl = self._empty(rows.shape[0], d)
            ops.embedding(xl, x, rows)  # row gather: x [T, D] serves as the table
        ops.rmsnorm(xl, xl, w.final_norm, cfg.norm_eps)
        logits = self._empty(xl.shape[0], cfg.vocab_size)
        ops.gemm(logits, xl, w.head)
        return logits

    def forward_tokens(self, st: CudaSession, ids: np.ndarray, seq: np.ndarray, pos: np.ndarray,
                       out_rows: np.ndarray, mask=None, u_hist=None, rope_pos=None, parents=None) -> np.ndarray:
        """model.Engine.forward_tokens on the GPU (called by Session.forward): host int arrays in,
        logits [R, V] out, or the argmax ids [R] when the session asks for ids only (greedy)."""
        if parents is not None:
            raise BackendError("tree verification (forward_tree) is not implemented on device='cuda'; use "
                               "device='cpu'")
        cfg, ops = self.config, self.ops
        t_ = len(ids)
        out_rows = np.asarray(out_rows, dtype=np.int64)
        decode_like = (mask is None and u_hist is None and rope_pos is None and len(out_rows) == t_
                       and np.array_equal(out_rows, np.arange(t_)))
        if self.use_graphs and decode_like and t_ <= 512:
            logits = st.graph_forward(ids, seq, pos)
        else:
            rp = pos if rope_pos is None else rope_pos
            packed = np.concatenate([ids, seq, pos, rp, out_rows]).astype(np.int32)  # one upload
            buf = self.Tensor.from_numpy(packed)
            d_ids, d_seq, d_pos, d_rp = buf[0:t_], buf[t_ : 2 * t_], buf[2 * t_ : 3 * t_], buf[3 * t_ : 4 * t_]
            d_rows = None if decode_like else buf[4 * t_ :]
            d_mask = None if mask is None else self.Tensor.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))
            u_dev = None
            if u_hist is not None:
                u_dev = {i: self._empty(t_, cfg.hidden_size) for i in cfg.conv_layers}
            logits = self.forward_device(st, d_ids, d_seq, d_pos, d_rows, d_mask, u_dev,
                                         None if rope_pos is None else d_rp)
            if u_dev is not None:
                for i in cfg.conv_layers:
                    u_hist[i][:] = u_dev[i].to_numpy()
        if st.want_ids:
            out = self._empty(logits.shape[0], dtype="int32")
            ops.argmax(out, logits)
            return out.to_numpy()
        return logits.to_numpy()

    # ------------------------------------------------------------------ generation
    def generate(self, batch, max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = False,
                 request_ids=None, on_step=None) -> list[list[int]]:
        """model.Engine.generate; greedy decoding picks the argmax on the GPU (only ids come down)."""
        from .sampling import Sampler

        Sampler(temperature, top_k, top_p, seed)  # argument checks
        if temperature != 0.0:
            return super().generate(batch, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos,
                                    request_ids, on_step)
        prompts = self.check_prompts(batch, max_new_tokens)
        n = len(prompts)
        out: list[list[int]] = [[] for _ in range(n)]
        if max_new_tokens == 0:
            return out
        s = self.session(n, max(len(p) for p in prompts) + max_new_tokens)
        s.want_ids = True
        toks = s.prefill(prompts)
        live = list(range(n))
        eos = set(self.config.eos_ids) if stop_at_eos else set()
        for step in range(max_new_tokens):
            nxt = []
            for j, b in enumerate(live):
                out[b].append(int(toks[j]))
                if int(toks[j]) not in eos and step + 1 < max_new_tokens:
                    nxt.append((b, int(toks[j])))
            if on_step is not None:
                on_step(step + 1, len(live))
            if not nxt:
                break
            live = [b for b, _ in nxt]
            toks = s.forward(live, [[t] for _, t in nxt])
        return out


class CudaSession(Session):
    """model.Session with device caches: KV [B, Hkv, S, Dh] and conv state [B, L-1, D] per layer
    as cuda.Tensors. forward / prefill / decode / truncate are inherited (truncate restores the
    conv state from the host-side u window when rollback > 0); tree verification is CPU-only."""

    def __init__(self, engine: CudaEngine, batch_size: int, capacity: int, rollback: int = 0):
        cfg = engine.config
        if batch_size < 1 or capacity < 1:
            raise InputError(f"a session needs batch_size >= 1 and capacity >= 1, got {batch_size}, {capacity}")
        if capacity > cfg.max_position_embeddings:
            raise InputError(f"capacity {capacity} exceeds the context of {cfg.max_position_embeddings} tokens")
        T = engine.Tensor
        self.engine, self.cfg = engine, cfg
        self.batch_size, self.capacity, self.rollback = batch_size, capacity, rollback
        kv = (batch_size, cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = {i: T.zeros(kv, "float32") for i in cfg.attention_layers}
        self.v = {i: T.zeros(kv, "float32") for i in cfg.attention_layers}
        lm1 = cfg.conv_L_cache - 1
        self.conv = {i: T.zeros((batch_size, lm1, cfg.hidden_size), "float32") for i in cfg.conv_layers}
        self.window = rollback + lm1
        self.uwin = ({i: np.zeros((batch_size, self.window, cfg.hidden_size), np.float32) for i in cfg.conv_layers}
                     if rollback > 0 else None)
        self.lengths = np.zeros(batch_size, np.int64)
        self.uvalid = np.full(batch_size, self.window, np.int64)
        self.want_ids = False  # forward returns argmax ids [R] instead of logits (greedy generate)
        self._graphs: dict[int, tuple] = {}  # T -> (graph, int32 input buffer [3T], logits tensor)
        self._seen: set[int] = set()

    def reset(self):
        self.lengths[:] = 0
        self.uvalid[:] = self.window
        for a in self.conv.values():
            a.zero_()
        if self.uwin is not None:
            for a in self.uwin.values():
                a[:] = 0

    def graph_forward(self, ids, seq, pos):
        """Decode-shaped forward (every row's logits) through a CUDA Graph per batch size T: the
        first call at a T runs eagerly, the second captures (recording only) and replays."""
        eng = self.engine
        t_ = len(ids)
        packed = np.concatenate([ids, seq, pos]).astype(np.int32)
        g = self._graphs.get(t_)
        if g is None and t_ not in self._seen:
            self._seen.add(t_)
            buf = eng.Tensor.from_numpy(packed)
            return eng.forward_device(self, buf[0:t_], buf[t_ : 2 * t_], buf[2 * t_ :])
        if g is None:
            buf = eng.Tensor.from_numpy(packed)  # allocated and filled before the capture
            graph = eng.ops.Graph()
            graph.begin()
            try:
                logits = eng.forward_device(self, buf[0:t_], buf[t_ : 2 * t_], buf[2 * t_ :])
            finally:
                graph.end()
            self._graphs[t_] = g = (graph, buf, logits)
        else:
            g[1].copy_(packed)
        g[0].replay()
        return g[2]

    def forward_tree(self, seq: int, tokens, parents) -> np.ndarray:
        raise BackendError("forward_tree (token-tree verification) is not implemented on device='cuda'; use "
                           "device='cpu'")

    def commit_tree(self, path) -> None:
        raise BackendError("commit_tree is not implemented on device='cuda'; use device='cpu'")


def from_pretrained(path: str | os.PathLike, dtype: str = "float32", verbose: bool = False) -> CudaEngine:
    """Load a Hugging Face LFM2 / LFM2-MoE checkpoint onto the GPU (the device='cuda' engine)."""
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
    _cuda_core()
    ck = Checkpoint(path)
    w = DeviceWeights(ck, dtype, verbose=verbose)
    return CudaEngine(ck.config, w, ck.fingerprint())
