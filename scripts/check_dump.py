#!/usr/bin/env python3
"""Recompute every point of a `decodelab run --dump DIR` folder with numpy and compare.

Reads DIR/<point>/meta.json and the .npy arrays, decodes bf16/f16/fp8_e4m3 and the 4-bit
weight formats (int4_g32, int4_g128, mxfp4, nvfp4: codes and their group scales) from their
raw bits, recomputes out/lse (kv_decode), y (expert_gemv) or the stream result in float64, and
prints the relative L2 error of the dumped outputs. Exits 1 if any exceeds the tolerance.

    python3 scripts/check_dump.py DIR [--tol 1e-5]
"""
import argparse
import json
import pathlib
import sys

import numpy as np


def fp8_e4m3_to_f64(bits):
    b = bits.astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = (b & 0x7).astype(np.float64)
    normal = (1.0 + man / 8.0) * np.exp2(exp - 7.0)
    sub = man / 8.0 * 2.0**-6
    v = sign * np.where(exp == 0, sub, normal)
    return np.where((b & 0x7F) == 0x7F, np.nan, v)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


INT4 = np.array([0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1], dtype=np.float64)
# dtype: (what a code means, values per scale, how a scale is stored)
FOUR_BIT = {
    "int4_g32": (INT4, 32, "bf16"),
    "int4_g128": (INT4, 128, "bf16"),
    "mxfp4": (E2M1, 32, "e8m0"),
    "nvfp4": (E2M1, 16, "fp8_e4m3"),
}


def four_bit_to_f64(codes, scales, dtype):
    """Codes two per byte, low nibble first (value i of a little-endian int32 in bits
    4i..4i+3), times the scale of their group along the last axis."""
    table, group, scale_dtype = FOUR_BIT[dtype]
    pairs = np.stack([table[codes & 0xF], table[codes >> 4]], axis=-1)
    values = pairs.reshape(codes.shape[:-1] + (codes.shape[-1] * 2,))
    if scale_dtype == "e8m0":
        s = np.exp2(scales.astype(np.float64) - 127.0)
    else:
        s = decode(scales, scale_dtype)
    return values * np.repeat(s, group, axis=-1)


def decode(arr, dtype):
    if dtype == "f32":
        return arr.astype(np.float64)
    if dtype == "f16":
        return arr.view(np.float16).astype(np.float64)
    if dtype == "bf16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if dtype == "fp8_e4m3":
        return fp8_e4m3_to_f64(arr)
    return arr.astype(np.float64)


def kv_decode(p, a, m):
    q = a["q"].astype(np.float64)
    dt = m["tensors"]["k_pages"]["dtype"]
    k = decode(a["k_pages"], dt)
    mla = p["attention"] == "mla"
    v = k if mla else decode(a["v_pages"], dt)
    ks, vs = (a["kv_scale"].astype(np.float64) if "kv_scale" in a else (1.0, 1.0))
    table, lens = a["page_table"], a["context_lens"]
    B, Hq, Dk = q.shape
    Dv = p["v_head_dim"]
    P, page, Hkv, _ = k.shape
    group = Hq // Hkv
    out = np.zeros((B, Hq, Dv))
    lse = np.zeros((B, Hq))
    for b in range(B):
        n = int(lens[b])
        t = np.arange(n)
        phys = table[b, t // page]
        slot = t % page
        for h in range(Hq):
            g = h // group
            kk = k[phys, slot, g, :] * ks
            vv = (v[phys, slot, g, :Dv] if mla else v[phys, slot, g, :]) * vs
            s = kk @ q[b, h] * p["scale"]
            mx = s.max()
            e = np.exp(s - mx)
            out[b, h] = e @ vv / e.sum()
            lse[b, h] = mx + np.log(e.sum())
    return {"out": out, "lse": lse}


def expert_gemv(p, a, m):
    x = a["x"].astype(np.float64)
    dt = m["tensors"]["w"]["dtype"]
    if dt in FOUR_BIT:
        w = four_bit_to_f64(a["w"], a["w_scale"], dt)
        if "w_scale_2" in a:  # nvfp4: one f32 per expert
            w = w * a["w_scale_2"].astype(np.float64)[:, None, None]
    else:
        w = decode(a["w"], dt)
    if "w_scale" in a and dt not in FOUR_BIT:
        s = a["w_scale"].astype(np.float64)
        if s.ndim == 3:  # weight_scale block128: one per 128 x 128 block, the last partial
            s = s.repeat(128, axis=1).repeat(128, axis=2)[:, : w.shape[1], : w.shape[2]]
        else:
            s = s[:, :, None]
        w = w * s
    ids, rw = a["topk_ids"], a["topk_weights"].astype(np.float64)
    T, k = ids.shape
    y = np.zeros((T, w.shape[1]))
    for t in range(T):
        for j in range(k):
            y[t] += rw[t, j] * (w[ids[t, j]] @ x[t])
    return {"y": y}


def stream(p, a, m):
    op = p["op"]
    if op == "read":
        return {"sum": np.array([int(a["src"].astype(np.uint64).sum()) & 0xFFFFFFFF], dtype=np.float64)}
    if op == "copy":
        return {"dst": a["src"].astype(np.float64)}
    return None  # the write pattern is checked by the run itself


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    points = sorted((d for d in args.dir.iterdir() if (d / "meta.json").exists()), key=lambda d: int(d.name))
    if not points:
        print(f"no dumped points under {args.dir}", file=sys.stderr)
        return 1
    worst, checked = 0.0, 0
    for d in points:
        m = json.loads((d / "meta.json").read_text())
        a = {name: np.load(d / f"{name}.npy") for name in m["tensors"]}
        want = {"kv_decode": kv_decode, "expert_gemv": expert_gemv, "stream": stream}[m["kernel"]](m["params"], a, m)
        if want is None:
            print(f"point {d.name:>3} {m['kernel']:<11} (write pattern: not recomputed)")
            continue
        for name, ref in want.items():
            got = a[name].astype(np.float64)
            err = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-300)
            if np.isnan(err):
                err = np.inf
            worst = max(worst, err)
            checked += 1
            print(f"point {d.name:>3} {m['kernel']:<11} {name:<4} rel L2 {err:.2e}")
    print(f"{checked} outputs recomputed, worst relative L2 error {worst:.2e} (tolerance {args.tol:g})")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
