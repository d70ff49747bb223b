"""CUDA backend throughput on one GPU: GEMM kinds, LFM2 blocks at the course shape, and the whole
model in FP32 and FP16, each against PyTorch on the same GPU in the same run where torch is there.

Correctness first: every timed case is checked against the CPU op or torch before it is timed.
Times are GPU times (cudaEvent pairs, an L2 flush before each repetition: _core.cuda.time_ms and
torch.cuda.Event), medians over --repeat runs; model figures are wall clock around the engine API
(host work and copies included), as a user sees them. Roofs: the device's datasheet peak (FP32
CUDA-core, FP16 dense Tensor Core, HBM), looked up by name, and the same run's measured
device-to-device copy bandwidth and cuBLAS GEMM (torch) for comparison.

    python benchmarks/bench_cuda.py                       # everything; writes analysis/out/bench_cuda.json
    python benchmarks/bench_cuda.py --quick               # small shapes, the built-in 'default' synthetic model
    python benchmarks/bench_cuda.py --model DIR --skip gemm,blocks
    python benchmarks/bench_cuda.py --skip roofs,gemm,blocks --model-dtypes float32,q8_0,q4_0,q4_k
The qgemm section times gemm and moe_experts with q8_0 / q4_0 / q4_k / q6_k weights (decode GB/s,
prefill GFLOP/s) next to bf16 weights on the same shapes.
The full-size model is the synthetic LFM2-8B-A1B (random weights, HF layout, 16.7 GB in bf16),
written to the lfm2engine cache on first use unless --model is given.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json

# Datasheet peaks (dense): FP32 on CUDA cores TFLOP/s, FP16 Tensor Core TFLOP/s, HBM TB/s.
PEAKS = [
    ("H100 PCIe", 51.2, 756.0, 2.0),
    ("H100 NVL", 60.0, 835.0, 3.9),
    ("H100", 66.9, 989.4, 3.35),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 66.9, 989.4, 4.8),
    ("H800", 66.9, 989.4, 3.35),
    ("A100-PCIE-40GB", 19.5, 312.0, 1.555),
    ("A100-PCIE", 19.5, 312.0, 1.935),
    ("A100-SXM4-40GB", 19.5, 312.0, 1.555),
    ("A100", 19.5, 312.0, 2.039),
    ("L40S", 91.6, 362.0, 0.864),
]
COURSE = {"conv": 10_000, "attention": 5_000, "moe": 250}  # tokens/s per block, the course's bar


def device_peaks(info: dict) -> dict:
    name = info["name"]
    for key, f32, f16, bw in PEAKS:
        if key.lower() in name.lower():
            return {"source": f"datasheet ({key})", "fp32_tflops": f32, "fp16_tc_tflops": f16, "hbm_tbps": bw}
    sm, clk = info["multiprocessors"], info.get("clock_khz", 0) * 1e3
    bw = 2 * info.get("memory_clock_khz", 0) * 1e3 * info.get("memory_bus_width", 0) / 8 / 1e12
    return {"source": "estimated from clocks", "fp32_tflops": 2 * 128 * sm * clk / 1e12,
            "fp16_tc_tflops": 2 * 1024 * sm * clk / 1e12, "hbm_tbps": bw}


def med(ts) -> float:
    return statistics.median(ts)


class Bench:
    def __init__(self, a):
        from lfm2engine import _core

        if not _core.has_cuda() or _core.cuda.device_count() == 0:
            sys.exit("bench_cuda: no CUDA GPU (built without CUDA, or cuda.device_count() == 0)")
        self.a, self.core, self.cuda, self.cpu = a, _core, _core.cuda, _core.cpu
        self.T = _core.cuda.Tensor
        self.info = self.cuda.device_info(0)
        self.peaks = device_peaks(self.info)
        self.torch = None
        if not a.no_torch:
            try:
                import torch

                if torch.cuda.is_available():
                    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 on both sides
                    torch.backends.cudnn.allow_tf32 = False
                    self.torch = torch
            except ImportError:
                pass
        self.rows: dict[str, list[dict]] = {}
        self.rng = np.random.default_rng(0)

    def ours(self, fn, reps=None) -> float:
        return med(self.cuda.time_ms(fn, warmup=2, reps=reps or self.a.repeat, flush_l2=True)) / 1e3

    def theirs(self, fn, reps=None) -> float:
        torch = self.torch
        flush = torch.empty(2 * max(self.info["l2_cache"], 1 << 20), dtype=torch.uint8, device="cuda")
        for _ in range(2):
            fn()
        ts = []
        for _ in range(reps or self.a.repeat):
            flush.zero_()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e) / 1e3)
        return med(ts)

    # ------------------------------------------------------------------ roofs measured in this run
    def roofs(self):
        n = 1 << 28  # 1 GiB of f32
        src, dst = self.T.zeros(n), self.T.empty(n)
        t = self.ours(lambda: dst.copy_(src))
        out = {"d2d_copy_GBps": 2 * 4 * n / t / 1e9}
        if self.torch:
            torch = self.torch
            for dt, key in ((torch.float32, "cublas_fp32_tflops"), (torch.float16, "cublas_fp16_tflops")):
                m = 8192
                x, y = torch.randn(m, m, device="cuda", dtype=dt), torch.randn(m, m, device="cuda", dtype=dt)
                out[key] = 2 * m**3 / self.theirs(lambda x=x, y=y: x @ y) / 1e12
        src = dst = None
        return out

    # ------------------------------------------------------------------ GEMM
    def gemm(self):
        a, cuda, cpu = self.a, self.cuda, self.cpu
        shapes = [(1, 2048, 2048), (1, 6144, 2048), (1, 2 * 1792, 2048), (1, 2048, 7168), (1, 65536, 2048),
                  (16, 6144, 2048), (64, 2048, 2048), (256, 6144, 2048), (1024, 2 * 7168, 2048), (4096, 2048, 2048),
                  (4096, 65536, 2048)]
        if a.quick:
            shapes = [(1, 2048, 2048), (16, 6144, 2048), (256, 2048, 2048), (2048, 2048, 2048)]
        rows = []
        for dt in ("float32", "float16"):
            peak = self.peaks["fp32_tflops"] if dt == "float32" else self.peaks["fp16_tc_tflops"]
            wb = 4 if dt == "float32" else 2
            for t_, n, k in shapes:
                x = self.rng.standard_normal((t_, k)).astype(np.float32)
                w = (self.rng.standard_normal((n, k)) * 0.02).astype(np.float32 if dt == "float32" else np.float16)
                if dt == "float16":
                    x = x.astype(np.float16).astype(np.float32)
                dx, dw, do = self.T.from_numpy(x), self.T.from_numpy(w), self.T.empty((t_, n))
                # correctness first: a few rows against the CPU op
                cuda.gemm(do, dx, dw)
                r = min(t_, 4)
                want = np.empty((r, n), np.float32)
                cpu.gemm(want, np.ascontiguousarray(x[:r]), w)
                err = float(np.abs(do.to_numpy()[:r] - want).max() / max(np.abs(want).max(), 1e-30))
                assert err < 1e-3, f"gemm {dt} {t_}x{n}x{k}: relative error {err:.2e} vs the CPU op"
                t = self.ours(lambda do=do, dx=dx, dw=dw: cuda.gemm(do, dx, dw))
                flop, byts = 2 * t_ * n * k, n * k * wb + 4 * t_ * (k + n)
                row = {"dtype": dt, "T": t_, "N": n, "K": k, "ms": 1e3 * t, "TFLOP/s": flop / t / 1e12,
                       "GB/s": byts / t / 1e9, "%peak_flops": 100 * flop / t / 1e12 / peak,
                       "%peak_bw": 100 * byts / t / 1e12 / self.peaks["hbm_tbps"], "rel_err_vs_cpu": err}
                if self.torch:
                    torch = self.torch
                    tx = torch.from_numpy(x).cuda().to(torch.float32 if dt == "float32" else torch.float16)
                    tw = torch.from_numpy(w).cuda()
                    ref = (tx @ tw.T).float().cpu().numpy()
                    row["rel_err_vs_torch"] = float(np.abs(do.to_numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))
                    tt = self.theirs(lambda tx=tx, tw=tw: tx @ tw.T)
                    row["torch_ms"] = 1e3 * tt
                    row["x_vs_torch"] = tt / t
                rows.append(row)
        self.rows["gemm"] = rows
        print_table(rows, ["dtype", "T", "N", "K", "ms", "TFLOP/s", "GB/s", "%peak_flops", "%peak_bw", "torch_ms",
                           "x_vs_torch"])

    # ------------------------------------------------------------------ block-quantized weights
    def qblocks(self, qtype: str, *shape) -> np.ndarray:
        """A block array of `qtype` with logical shape `shape` (last dim in weights): random codes,
        small finite f16 scales (fast at lm-head sizes, unlike quantizing random floats)."""
        from lfm2engine import quant

        q = quant.QTYPES[qtype]
        nb = int(np.prod(shape[:-1])) * (shape[-1] // q.block)
        a = self.rng.integers(0, 256, nb * q.nbytes, dtype=np.uint8).view(q.dtype)
        for f in ("d", "dmin"):
            if f in q.dtype.names:
                a[f] = self.rng.uniform(0.5, 1.0, nb).astype(np.float16) * np.float16(2 ** -9)
        return a.reshape(shape[:-1] + (shape[-1] // q.block,))

    def qgemm(self):
        """gemm and moe_experts with q8_0 / q4_0 / q4_k / q6_k weights (dequantized in the kernels,
        fp32 activations and accumulation) at LFM2-8B-A1B shapes: decode (T = 1, weight-bandwidth
        bound: GB/s of block bytes) and prefill (T >= 16: GFLOP/s); bf16 weights on the same shape
        for comparison (x_vs_bf16 = bf16 time / quantized time)."""
        from lfm2engine import quant

        a, cuda, cpu = self.a, self.cuda, self.cpu
        shapes = [(1, 2048, 2048), (1, 6144, 2048), (1, 2048, 7168), (1, 65536, 2048), (16, 6144, 2048),
                  (64, 2 * 1792, 2048), (512, 6144, 2048), (512, 2048, 1792), (4096, 2048, 2048)]
        if a.quick:
            shapes = [(1, 2048, 2048), (1, 6144, 2048), (16, 6144, 2048), (512, 2048, 2048)]
        rows, bf16_ms = [], {}
        for qtype in ("bfloat16",) + tuple(quant.QTYPES):
            for t_, n, k in shapes:
                x = self.rng.standard_normal((t_, k)).astype(np.float32)
                if qtype == "bfloat16":
                    from lfm2engine.checkpoint import f32_to_bf16

                    w = f32_to_bf16((self.rng.standard_normal((n, k)) * 0.02).astype(np.float32))
                else:
                    w = self.qblocks(qtype, n, k)
                dx, dw, do = self.T.from_numpy(x), self.T.from_numpy(w), self.T.empty((t_, n))
                cuda.gemm(do, dx, dw)  # correctness first: a few rows against the CPU op
                r = min(t_, 4)
                want = np.empty((r, n), np.float32)
                cpu.gemm(want, np.ascontiguousarray(x[:r]), w)
                err = float(np.abs(do.to_numpy()[:r] - want).max() / max(np.abs(want).max(), 1e-30))
                assert err < 1e-4, f"gemm {qtype} {t_}x{n}x{k}: relative error {err:.2e} vs the CPU op"
                t = self.ours(lambda do=do, dx=dx, dw=dw: cuda.gemm(do, dx, dw))
                flop, byts = 2 * t_ * n * k, w.nbytes + 4 * t_ * (k + n)
                row = {"op": "gemm", "wdtype": qtype, "T": t_, "N": n, "K": k, "ms": 1e3 * t,
                       "GFLOP/s": flop / t / 1e9, "GB/s": byts / t / 1e9,
                       "%peak_bw": 100 * byts / t / 1e12 / self.peaks["hbm_tbps"], "rel_err_vs_cpu": err}
                if qtype == "bfloat16":
                    bf16_ms[(t_, n, k)] = t
                else:
                    row["x_vs_bf16"] = bf16_ms[(t_, n, k)] / t
                rows.append(row)
                dx = dw = do = None
        # MoE experts of one layer (E = 32, top-4, D = 2048, Fe = 1792): T tokens, uniform random routing
        e_, kk, d, fe = 32, 4, 2048, 1792
        for qtype in quant.QTYPES:
            w13, w2 = self.T.from_numpy(self.qblocks(qtype, e_, 2 * fe, d)), self.T.from_numpy(self.qblocks(qtype, e_, d, fe))
            per_expert = (w13.nbytes + w2.nbytes) / e_
            for t_ in ((1, 16) if a.quick else (1, 16, 256)):
                ids = np.stack([self.rng.choice(e_, kk, replace=False) for _ in range(t_)]).astype(np.int32)
                wts = self.rng.random((t_, kk), dtype=np.float32)
                dx, dids, dwts = (self.T.from_numpy(self.rng.standard_normal((t_, d), dtype=np.float32)),
                                  self.T.from_numpy(ids), self.T.from_numpy(wts))
                do = self.T.empty((t_, d))
                t = self.ours(lambda do=do, dx=dx, dids=dids, dwts=dwts, w13=w13, w2=w2:
                              cuda.moe_experts(do, dx, dids, dwts, w13, w2))
                touched = len(np.unique(ids))
                byts, flop = touched * per_expert, 2 * t_ * kk * 3 * fe * d
                rows.append({"op": f"moe_experts E{e_} top{kk}", "wdtype": qtype, "T": t_, "N": d, "K": fe,
                             "ms": 1e3 * t, "GFLOP/s": flop / t / 1e9, "GB/s": byts / t / 1e9,
                             "%peak_bw": 100 * byts / t / 1e12 / self.peaks["hbm_tbps"]})
            w13 = w2 = None
            gc.collect()
            self.cuda.empty_cache()
        self.rows["qgemm"] = rows
        print_table(rows, ["op", "wdtype", "T", "N", "K", "ms", "GFLOP/s", "GB/s", "%peak_bw", "x_vs_bf16"])

    # ------------------------------------------------------------------ blocks at the course shape
    def blocks(self):
        """One conv / attention / MoE / dense block (norm, operator, residual) of LFM2-8B-A1B with
        random weights, on B sequences of 16 new tokens each (prefill from an empty cache)."""
        from lfm2engine import Engine
        from lfm2engine.synthetic import preset_config
        from lfm2engine.weights import LayerWeights

        cfg = preset_config("full")
        d, rng = cfg.hidden_size, self.rng
        rows = []
        for dt in ("float32", "float16"):
            npdt = np.float32 if dt == "float32" else np.float16

            def up(*shape, scale=None, npdt=npdt):
                s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
                return self.T.from_numpy((rng.standard_normal(shape, dtype=np.float32) * s).astype(npdt))

            def f32(*shape, scale=1.0, base=0.0):
                return self.T.from_numpy((base + rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32))

            layers = [LayerWeights() for _ in range(cfg.num_hidden_layers)]
            ia, ic, im, idn = cfg.attention_layers[0], cfg.conv_layers[-1], cfg.num_hidden_layers - 1, 0
            nh, nkv, dh, e_, fe = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.num_experts,
                                   cfg.moe_intermediate_size)
            for i in {ia, ic, im, idn}:
                layers[i].op_norm, layers[i].ffn_norm = f32(d, scale=0.1, base=1.0), f32(d, scale=0.1, base=1.0)
            la, lc, lm, ld = layers[ia], layers[ic], layers[im], layers[idn]
            la.wqkv, la.wo = up((nh + 2 * nkv) * dh, d), up(d, nh * dh)
            la.q_norm, la.k_norm = f32(dh, scale=0.1, base=1.0), f32(dh, scale=0.1, base=1.0)
            lc.in_proj, lc.out_proj, lc.conv_w = up(3 * d, d), up(d, d), f32(d, cfg.conv_L_cache, scale=0.5)
            lm.gate, lm.expert_bias = f32(e_, d, scale=1.5 / np.sqrt(d)), f32(e_, scale=0.05)
            lm.ew13, lm.ew2 = up(e_, 2 * fe, d), up(e_, d, fe)
            ld.w13, ld.w2 = up(2 * cfg.intermediate_size, d), up(d, cfg.intermediate_size)
            w = types.SimpleNamespace(dtype=dt, layers=layers)
            eng = Engine(cfg, w, "cuda")
            idx = {"attention": ia, "conv": ic, "moe": im, "dense": idn}
            for b in ((1, 16) if self.a.quick else (1, 16, 64, 256)):
                t_ = 16 * b
                st = eng.session(b, 16)
                seq = self.T.from_numpy(np.repeat(np.arange(b), 16).astype(np.int32))
                pos = self.T.from_numpy(np.tile(np.arange(16), b).astype(np.int32))
                x = self.T.from_numpy(rng.standard_normal((t_, d), dtype=np.float32))
                h = self.T.empty((t_, d))

                for kind in ("conv", "attention", "moe", "dense"):
                    args = (eng, cfg, layers[idx[kind]], idx[kind], kind, x, h, st, seq, pos)
                    t = self.ours(lambda a=args: self.block(*a))
                    tps = t_ / t
                    row = {"block": kind, "dtype": dt, "batch": b, "tokens": t_, "ms": 1e3 * t, "tokens/s": tps}
                    if kind in COURSE:
                        row["x_course"] = tps / COURSE[kind]
                        row["x_10x_target"] = tps / (10 * COURSE[kind])
                    rows.append(row)
            eng = layers = w = None
            gc.collect()
            self.cuda.empty_cache()
        self.rows["blocks"] = rows
        print_table(rows, ["block", "dtype", "batch", "tokens", "ms", "tokens/s", "x_course", "x_10x_target"])

    def block(self, eng, cfg, lw, i, kind, x, h, st, seq, pos):
        """x += block_i(rmsnorm(x)) on device tensors: operator blocks use operator_norm, FFNs ffn_norm."""
        ops = self.cuda
        if kind in ("attention", "conv"):
            ops.rmsnorm(h, x, lw.op_norm, cfg.norm_eps)
            y = eng.attention_block(i, h, st, seq, pos) if kind == "attention" else eng.shortconv_block(i, h, st, seq)
        else:
            ops.rmsnorm(h, x, lw.ffn_norm, cfg.norm_eps)
            y = eng.local_moe(i, h) if kind == "moe" else eng.dense_ffn(i, h)
        ops.add(x, y)

    # ------------------------------------------------------------------ the whole model
    def model(self):
        from bench_model import active_weight_bytes
        from lfm2engine import Engine
        from lfm2engine.synthetic import default_model_dir

        a = self.a
        path = a.model or default_model_dir("default" if a.quick else "full")
        rows, logits_ref = [], {}
        batches, plen = ((1, 16) if a.quick else (1, 16, 64)), a.prompt_len
        for dt in a.model_dtypes.split(","):
            t0 = time.time()
            eng = Engine.from_pretrained(path, dt, device="cuda", verbose=True)
            load_s = time.time() - t0
            cfg = eng.config
            rng = np.random.default_rng(1)
            prompts = {b: rng.integers(2, cfg.vocab_size, (b, plen)).tolist() for b in batches}
            logits_ref[dt] = eng.logits(prompts[batches[-1]][:4])
            for b in batches:
                eng.logits(prompts[b])  # warm
                ts = []
                for _ in range(a.repeat):
                    s = time.perf_counter()
                    eng.logits(prompts[b])
                    ts.append(time.perf_counter() - s)
                t = med(ts)
                rows.append({"case": f"prefill b{b} x {plen}", "dtype": dt, "samples/s": b / t,
                             "tokens/s": b * plen / t, "ms": 1e3 * t, "load_s": load_s})
            for b in batches:
                st = eng.session(b, plen + a.decode_steps + 4)
                st.prefill(prompts[b])
                st.decode([3] * b)  # eager, then graph capture on the next step
                st.decode([3] * b)
                s = time.perf_counter()
                for _ in range(a.decode_steps):
                    st.decode([3] * b)
                t = (time.perf_counter() - s) / a.decode_steps
                gbs = active_weight_bytes(cfg, weight_bytes(dt), b) / t / 1e9
                rows.append({"case": f"decode b{b} (logits to host)", "dtype": dt, "tokens/s": b / t, "ms": 1e3 * t,
                             "GB/s": gbs, "%peak_bw": 100 * gbs / 1e3 / self.peaks["hbm_tbps"]})
                s = time.perf_counter()
                eng.generate(prompts[b], max_new_tokens=a.decode_steps)
                t = time.perf_counter() - s
                rows.append({"case": f"generate b{b} greedy ({a.decode_steps} new, prefill incl.)", "dtype": dt,
                             "tokens/s": b * a.decode_steps / t, "ms": 1e3 * t})
            eng = None  # free the GPU before the next dtype / transformers
            gc.collect()
            self.cuda.empty_cache()
        for dt, ref in logits_ref.items():
            if dt != "float32" and "float32" in logits_ref:
                top1 = float((logits_ref["float32"].argmax(-1) == ref.argmax(-1)).mean())
                rows.append({"case": f"{dt} vs float32 top-1 agreement", "dtype": "-", "value": top1})
        if self.torch:
            theirs = self.model_torch(path, prompts, logits_ref, batches, plen)
            ours = {(r["case"], r["dtype"]): r for r in rows}
            for r in theirs:  # ratios on our matching rows
                c = r.get("case", "")
                key = (c.replace("transformers prefill", "prefill"), r.get("dtype"))
                if c.startswith("transformers decode"):
                    key = (c.replace("transformers decode", "decode") + " (logits to host)", r.get("dtype"))
                if key in ours and "tokens/s" in r:
                    ours[key]["x_vs_torch"] = ours[key]["tokens/s"] / r["tokens/s"]
            rows += theirs
        self.rows["model"] = rows
        print_table(rows, ["case", "dtype", "samples/s", "tokens/s", "ms", "GB/s", "%peak_bw", "x_vs_torch",
                           "max_abs_logit_diff", "value", "load_s"])

    def model_torch(self, path, prompts, logits_ref, batches, plen):
        torch = self.torch
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            return [{"case": "transformers not installed: no model comparison"}]
        rows = []
        for dt in [d for d in logits_ref if d in ("float32", "float16")]:
            tdt = torch.float32 if dt == "float32" else torch.float16
            try:
                m = AutoModelForCausalLM.from_pretrained(path, dtype=tdt).cuda().eval()
            except Exception as e:  # noqa: BLE001 - report, do not fail the run (e.g. out of memory)
                rows.append({"case": f"transformers {dt}: could not run ({type(e).__name__}: {e})"[:160]})
                continue
            with torch.no_grad():
                ref = m(torch.tensor(prompts[batches[-1]][:4], device="cuda")).logits[:, -1].float().cpu().numpy()
            rows.append({"case": "logits vs transformers (same GPU)", "dtype": dt,
                         "max_abs_logit_diff": float(np.abs(ref - logits_ref[dt]).max()),
                         "value": float((ref.argmax(-1) == logits_ref[dt].argmax(-1)).mean())})
            for b in batches:
                ids = torch.tensor(prompts[b], device="cuda")
                with torch.no_grad():
                    t = self.theirs(lambda m=m, ids=ids: m(ids, use_cache=False), reps=self.a.repeat)
                rows.append({"case": f"transformers prefill b{b} x {plen}", "dtype": dt, "samples/s": b / t,
                             "tokens/s": b * plen / t, "ms": 1e3 * t})
                n = self.a.decode_steps
                with torch.no_grad():
                    def gen(k, m=m, ids=ids):
                        torch.cuda.synchronize()
                        s = time.perf_counter()
                        m.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0,
                                   eos_token_id=None)
                        torch.cuda.synchronize()
                        return time.perf_counter() - s

                    gen(2)
                    t = max(gen(n + 1) - gen(1), 1e-9) / n
                rows.append({"case": f"transformers decode b{b}", "dtype": dt, "tokens/s": b / t, "ms": 1e3 * t})
            m = None
            gc.collect()
            torch.cuda.empty_cache()
        return rows


def weight_bytes(dtype: str) -> float:
    """Bytes per weight of an engine dtype (block types: block bytes / block weights)."""
    from lfm2engine import quant

    if dtype in quant.QTYPES:
        return quant.QTYPES[dtype].nbytes / quant.QTYPES[dtype].block
    return {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint dir (default: synthetic 'full', or 'default' with --quick)")
    ap.add_argument("--quick", action="store_true", help="small shapes and the small synthetic model")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: roofs,gemm,qgemm,blocks,model")
    ap.add_argument("--model-dtypes", default="float32,float16",
                    help="engine dtypes of the model section, e.g. float32,float16,q8_0,q4_0 (quantized ones need "
                         "Engine.from_pretrained(dtype=...) to accept them)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=16, help="the course shape: sequences of length 16")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch / transformers baselines")
    ap.add_argument("--json", default="analysis/out/bench_cuda.json")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    b = Bench(a)
    print(f"device: {b.info['name']} ({b.info['multiprocessors']} SMs, {b.info['total_memory'] / 2**30:.0f} GiB); "
          f"peaks ({b.peaks['source']}): FP32 {b.peaks['fp32_tflops']:.1f} TFLOP/s, FP16 TC "
          f"{b.peaks['fp16_tc_tflops']:.0f} TFLOP/s, HBM {b.peaks['hbm_tbps']:.2f} TB/s; torch: {bool(b.torch)}",
          file=sys.stderr)
    out = {"device": b.info, "peaks": b.peaks, "args": vars(a)}
    if "roofs" not in skip:
        out["measured_roofs"] = b.roofs()
        print(f"measured in this run: {out['measured_roofs']}", file=sys.stderr)
    for section in ("gemm", "qgemm", "blocks", "model"):
        if section not in skip:
            print(f"\n== {section}", file=sys.stderr)
            getattr(b, section)()
    out["results"] = b.rows
    write_json(a.json, out)


if __name__ == "__main__":
    main()
