#!/usr/bin/env python3
"""PyTorch at the same shapes as a decodelab run, on the same card: one JSON line per point of
a results.jsonl (each point once, whichever backends and implementations ran it), timed like
decodelab (CUDA events, warm-up, median, a 512 MiB clear before each rep for a cold L2), and
held to the point's own byte count, so "x torch" compares times for the same job.

    python3 scripts/torch_reference.py RESULTS.jsonl [--reps 20] > torch.jsonl

What PyTorch runs for each kernel:
  stream read   int32 sum of the same bytes
  kv_decode gqa scaled_dot_product_attention(enable_gqa=True) over a contiguous bf16 cache
                (no paging: the easier memory pattern); fp8 caches are skipped (no fp8 SDPA)
  kv_decode mla the absorbed form as explicit bf16 matmuls, softmax between (SDPA would fall
                back to its math kernel and run out of memory at long contexts)
  expert_gemv   torch.bmm over the touched experts' bf16 weights, the tokens of each expert
                padded to the most any expert got; int4_g32 / int4_g128 through
                torch._weight_int4pack_mm (tinygemm: 4-bit codes, a bf16 scale and zero per
                group), one call per touched expert replayed as one CUDA graph; fp8, mxfp4
                and nvfp4 weights are skipped
A point PyTorch cannot run gets its reason in "what" (and no time); the others still run.
"""
import argparse
import json
import math
import sys

import torch

dev = torch.device("cuda")
flush = torch.empty(512 << 20, dtype=torch.uint8, device=dev)


def timed(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    times.sort()
    return times[len(times) // 2]


def stream(p):
    if p["op"] != "read":
        return None, "only read is compared"
    a = torch.ones(p["bytes"] // 4, dtype=torch.int32, device=dev)
    return (lambda: a.sum()), "int32 sum"


def gqa(p):
    if p["kv_dtype"] != "bf16":
        return None, f'no SDPA for a {p["kv_dtype"]} cache'
    b, hq, hkv, d, ctx = p["batch"], p["q_heads"], p["kv_heads"], p["head_dim"], p["context"]
    q = torch.randn(b, hq, 1, d, dtype=torch.bfloat16, device=dev)
    k = torch.randn(b, hkv, ctx, d, dtype=torch.bfloat16, device=dev)
    v = torch.randn(b, hkv, ctx, p["v_head_dim"], dtype=torch.bfloat16, device=dev)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return (lambda: sdpa(q, k, v, enable_gqa=True)), "SDPA, contiguous bf16"


def mla(p):
    if p["kv_dtype"] != "bf16":
        return None, f'no fp8 matmul path for a {p["kv_dtype"]} latent'
    b, h, ctx = p["batch"], p["q_heads"], p["context"]
    rank, rope = p["kv_lora_rank"], p["rope_dim"]
    q = torch.randn(b, h, rank + rope, dtype=torch.bfloat16, device=dev)
    kv = torch.randn(b, ctx, rank + rope, dtype=torch.bfloat16, device=dev)
    scale = p["scale"]

    def fn():
        s = torch.matmul(q, kv.transpose(1, 2)) * scale
        return torch.matmul(torch.softmax(s.float(), dim=-1).to(torch.bfloat16), kv[..., :rank])

    return fn, "absorbed, bf16 matmuls"


def expert(p):
    if p["weight_dtype"] != "bf16":
        return None, f'no {p["weight_dtype"]} grouped matmul compared'
    u, t, k = p["experts_touched"], p["batch"], p["top_k"]
    per = max(1, math.ceil(t * k / u))
    w = torch.randn(u, p["d_out"], p["d_in"], dtype=torch.bfloat16, device=dev)
    x = torch.randn(u, p["d_in"], per, dtype=torch.bfloat16, device=dev)
    return (lambda: torch.bmm(w, x)), f"bmm over {u} experts x {per} tokens"


def expert_int4(p):
    """The touched experts' int4 weights through tinygemm, as W4A16 (bf16 activations)."""
    group = {"int4_g32": 32, "int4_g128": 128}[p["weight_dtype"]]
    u, t, k = p["experts_touched"], p["batch"], p["top_k"]
    per = max(1, math.ceil(t * k / u))
    n, d_in = p["d_out"], p["d_in"]
    # tinygemm packs k in tiles of 16 x innerKTiles and n in 8s.
    tiles = next((i for i in (8, 4, 2) if d_in % (16 * i) == 0), None)
    if tiles is None or n % 8:
        return None, f"tinygemm needs d_out % 8 == 0 and d_in % 32 == 0 (d_out {n}, d_in {d_in})"
    weights, scales = [], []
    for _ in range(u):
        codes = torch.randint(0, 256, (n, d_in // 2), dtype=torch.uint8, device=dev)
        weights.append(torch._convert_weight_to_int4pack(codes, tiles))
        sz = torch.zeros(d_in // group, n, 2, dtype=torch.bfloat16, device=dev)
        sz[..., 0] = 0.01
        scales.append(sz)
    x = torch.randn(per, d_in, dtype=torch.bfloat16, device=dev)

    def step():
        for w, sz in zip(weights, scales):
            torch._weight_int4pack_mm(x, w, group, sz)

    # One graph for the u calls, so the host's launch loop is not what is timed.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay, f"_weight_int4pack_mm over {u} experts x {per} tokens (one CUDA graph)"


def build(line):
    p, kernel = line["params"], line["kernel"]
    if kernel == "stream":
        return stream(p)
    if kernel == "kv_decode":
        return mla(p) if p["attention"] == "mla" else gqa(p)
    if kernel == "expert_gemv":
        if p["weight_dtype"] in ("int4_g32", "int4_g128"):
            return expert_int4(p)
        return expert(p)
    return None, f"no reference for {kernel}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    seen = set()
    for text in open(a.results):
        line = json.loads(text)
        if line.get("split", "none") != "none":
            continue
        # One reference per shape: implementations and math modes share it.
        params = {k: v for k, v in line["params"].items() if k != "math"}
        key = (line["kernel"], json.dumps(params, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        out = {"experiment": line["experiment"], "point": line["point"], "kernel": line["kernel"],
               "params": line["params"], "bytes": line["bytes"]}
        try:
            fn, what = build(line)
            out["what"] = what
            if fn is not None:
                t = timed(fn, a.reps)
                out.update(median_s=t, gbps=line["bytes"] / t / 1e9)
        except torch.OutOfMemoryError as e:
            out["what"] = f"out of memory: {e}".splitlines()[0]
        except Exception as e:  # an op this PyTorch lacks or refuses: say so, go on
            out["what"] = f"failed: {type(e).__name__}: {e}".splitlines()[0]
        finally:
            torch.cuda.empty_cache()
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
