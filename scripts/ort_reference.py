#!/usr/bin/env python3
"""ONNX Runtime on the CPU at the same shapes as a decodelab cpu run: one JSON line per point
of a results.jsonl that the peer can run, timed like decodelab (warm-up, median of reps, a
1 GiB write before each rep so the inputs start out of cache) and held to the point's own
byte count, so "x ort" compares times for the same job.

    python3 scripts/ort_reference.py RESULTS.jsonl [--reps 20] [--threads N] > ort.jsonl

Needs onnxruntime, onnx and numpy (a venv of its own: scripts/cpu-bench.sh makes one); CI
does not run it. What ONNX Runtime runs for each kernel (its CPU kernels are f32; points
stored in other dtypes are skipped, since the peer would move other bytes):
  kv_decode gqa  MatMul(q, K^T) -> Softmax -> MatMul(P, V) per (sequence, KV head group) on a
                 contiguous f32 cache, K stored transposed for the peer (its best layout; no
                 paging: the easier memory pattern)
  kv_decode mla  the absorbed form the same way: scores over the latent, V = its first dims
  expert_gemv    one MatMul per (token, chosen expert) on f32 weights [d_in, d_out], summed
                 with the routing weights (ORT has no grouped GEMV); tokens that share an
                 expert share its MatMul. int4_g32 / int4_g128: MatMulNBits (com.microsoft,
                 4 bits, block 32 / 128, zero point 8 = symmetric, f32 scales: 0.5 bit per
                 weight more than decodelab's bf16 scales, held to decodelab's byte count)
"""
import argparse
import json
import sys
import time

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnx import TensorProto, helper

SCRATCH = np.zeros(1 << 28, dtype=np.float32)  # 1 GiB, written before each rep


def session(graph, threads):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def timed(run, reps, warmup=2):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        np.add(SCRATCH, 1.0, out=SCRATCH)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def kv_decode(p, threads, reps):
    """Attention of one decode step: q [B*Hkv, G, Dk], K^T [B*Hkv, Dk, L], V [B*Hkv, L, Dv]."""
    if p["kv_dtype"] != "f32" or p.get("lengths") is not None:
        return None, "f32 caches of equal lengths only"
    mla = p["attention"] == "mla"
    b, hq, ctx = p["batch"], p["q_heads"], p["context"]
    hkv = 1 if mla else p["kv_heads"]
    dk, dv = p["head_dim"], p["v_head_dim"]
    g = hq // hkv
    rng = np.random.default_rng(1)
    q = rng.standard_normal((b * hkv, g, dk), dtype=np.float32)
    kt = rng.standard_normal((b * hkv, dk, ctx), dtype=np.float32)
    feeds = {"q": q, "kt": kt}
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
    ]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [p["scale"]])]
    inputs = [f32("q", list(q.shape)), f32("kt", list(kt.shape))]
    if mla:
        # V is the latent's first dv dims: [B, L, Dv] from K^T's rows, as the peer would
        # keep a second, row-major copy of it (the absorbed form reads the latent twice).
        v = np.ascontiguousarray(kt[:, :dv, :].transpose(0, 2, 1))
    else:
        v = rng.standard_normal((b * hkv, ctx, dv), dtype=np.float32)
    feeds["v"] = v
    inputs.append(f32("v", list(v.shape)))
    nodes.append(helper.make_node("MatMul", ["p", "v"], ["out"]))
    graph = helper.make_graph(nodes, "kv", inputs, [f32("out", [b * hkv, g, dv])], inits)
    s = session(graph, threads)
    median, _ = timed(lambda: s.run(None, feeds), reps)
    return median, "MatMul-Softmax-MatMul, contiguous f32 cache, K transposed"


def matmul_nbits(e, din, dout, block, rng):
    """Node and initializers of one expert's MatMulNBits: B [N, K / block, block / 2]. B and
    its scales are initializers, so ORT prepacks them once (as a deployment would); f32
    accuracy (accuracy_level 1), as decodelab's math: f32."""
    codes = rng.integers(0, 256, size=(dout, din // block, block // 2), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.02, size=(dout * (din // block),)).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits", [f"x{e}", f"b{e}", f"s{e}"], [f"y{e}"], domain="com.microsoft",
        K=din, N=dout, bits=4, block_size=block, accuracy_level=1)
    inits = [onnx.numpy_helper.from_array(codes, f"b{e}"), onnx.numpy_helper.from_array(scales, f"s{e}")]
    return node, inits


def expert_gemv(p, threads, reps):
    block = {"int4_g32": 32, "int4_g128": 128}.get(p["weight_dtype"])
    if p["weight_dtype"] != "f32" and block is None:
        return None, "f32 and int4 weights only"
    t, k, din, dout = p["batch"], p["top_k"], p["d_in"], p["d_out"]
    touched = p.get("experts_touched", min(p["experts"], t * k))
    rng = np.random.default_rng(2)
    # Each touched expert's weights once, its tokens stacked as the rows of one MatMul.
    per = [t * k // touched + (1 if e < (t * k) % touched else 0) for e in range(touched)]
    feeds, nodes, inputs, outs, inits = {}, [], [], [], []
    for e in range(touched):
        x = rng.standard_normal((max(per[e], 1), din), dtype=np.float32)
        feeds[f"x{e}"] = x
        inputs.append(f32(f"x{e}", list(x.shape)))
        if block:
            node, more = matmul_nbits(e, din, dout, block, rng)
            nodes.append(node)
            inits += more
        else:
            w = rng.standard_normal((din, dout), dtype=np.float32)
            feeds[f"w{e}"] = w
            inputs.append(f32(f"w{e}", list(w.shape)))
            nodes.append(helper.make_node("MatMul", [f"x{e}", f"w{e}"], [f"y{e}"]))
        outs.append(f32(f"y{e}", [x.shape[0], dout]))
    graph = helper.make_graph(nodes, "experts", inputs, outs, initializer=inits)
    s = session(graph, threads)
    median, _ = timed(lambda: s.run(None, feeds), reps)
    if block:
        return median, f"{touched} MatMulNBits (4 bits, block {block}, f32 scales)"
    return median, f"{touched} MatMuls, f32 weights as inputs"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="0: ORT's default (every core)")
    a = ap.parse_args()
    seen = set()
    for line in open(a.results):
        l = json.loads(line)
        # Each shape once (impl: all makes a point per implementation of the same shape).
        shape = (l["kernel"], json.dumps(l["params"], sort_keys=True))
        if l["backend"] != "cpu" or l["split"] != "none" or shape in seen:
            continue
        seen.add(shape)
        run = {"kv_decode": kv_decode, "expert_gemv": expert_gemv}.get(l["kernel"])
        if run is None:
            continue
        median, how = run(l["params"], a.threads, a.reps)
        out = {"point": l["point"], "kernel": l["kernel"], "params": l["params"], "peer": f"onnxruntime {ort.__version__}", "how": how}
        if median is not None:
            out.update(median_s=median, gbps=l["bytes"] / median / 1e9)
        print(json.dumps(out), flush=True)
        print(f"point {l['point']}: {how}: " + (f"{out['gbps']:.2f} GB/s" if median else "skipped"), file=sys.stderr)


if __name__ == "__main__":
    main()
