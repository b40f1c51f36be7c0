#!/usr/bin/env python3
"""The cpu bench table: per point, simple and every vector path (GB/s, % of roofline, the
bound), and ONNX Runtime at the same shape where it runs one, from a decodelab results.jsonl
and scripts/ort_reference.py's lines; glibc's memcpy / memset beside the stream lines, from
scripts/libc_reference.py's.

    python3 scripts/cpu_table.py RESULTS.jsonl [ORT.jsonl] [LIBC.jsonl] > table.md
"""
import json
import sys


def label(l):
    p = l["params"]
    if l["kernel"] == "kv_decode":
        if p["attention"] == "mla":
            return f"mla b{p['batch']} hq{p['q_heads']} ctx{p['context']} {p['kv_dtype']}"
        return f"gqa b{p['batch']} hq{p['q_heads']}/{p['kv_heads']} d{p['head_dim']} ctx{p['context']} {p['kv_dtype']}"
    if l["kernel"] == "expert_gemv":
        return f"E{p['experts']} k{p['top_k']} T{p['batch']} {p['d_out']}x{p['d_in']} {p['weight_dtype']}"
    return f"{l['kernel']} {p.get('op', '')} {p.get('bytes', '')}"


def main():
    lines = [json.loads(x) for x in open(sys.argv[1])]
    key = lambda kernel, params: (kernel, json.dumps(params, sort_keys=True))
    peer = {}
    for path in sys.argv[2:]:
        for x in open(path):
            o = json.loads(x)
            peer[key(o["kernel"], o["params"])] = o
    streams = [l for l in lines if l["kernel"] == "stream"]
    for l in streams:
        print(f"- stream {l['params']['op']} ({l['impl']}): {l['gbps']:.1f} GB/s")
    # glibc beside each stream op it has, and the best of decodelab's paths against it.
    for shape in dict.fromkeys(key("stream", l["params"]) for l in streams):
        o = peer.get(shape)
        if o and "gbps" in o:
            best = max((l for l in streams if key("stream", l["params"]) == shape), key=lambda l: l["gbps"])
            op = json.loads(shape[1])["op"]
            print(f"- stream {op}, {o['peer']}: {o['gbps']:.1f} GB/s ({best['impl']}: {best['gbps'] / o['gbps']:.2f}x)")
    peaks = {l["roofline"]["peak"]: l["roofline"]["peak_gflops"] for l in lines if l.get("roofline") and l["roofline"].get("peak_gflops")}
    for unit, g in peaks.items():
        print(f"- compute ceiling ({unit}): {g:.0f} GFLOP/s")
    print()
    impls = []
    for l in lines:
        if l["kernel"] != "stream" and l["impl"] not in impls:
            impls.append(l["impl"])
    head = ["pts", "shape", "F/B"] + [f"{i} GB/s (%roof, bound)" for i in impls] + ["ort GB/s", "best / ort"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    # One row per shape: impl: all makes a point per implementation of it.
    by_shape = {}
    for l in lines:
        if l["kernel"] != "stream" and l["check"]["pass"]:
            by_shape.setdefault(key(l["kernel"], l["params"]), {})[l["impl"]] = l
    for shape, row in sorted(by_shape.items(), key=lambda kv: min(l["point"] for l in kv[1].values())):
        any_l = next(iter(row.values()))
        r = any_l.get("roofline") or {}
        pts = "-".join(str(p) for p in sorted({min(l["point"] for l in row.values()), max(l["point"] for l in row.values())}))
        cells = [pts, label(any_l), f"{r.get('flop_per_byte', 0):.3g}"]
        best = 0.0
        for i in impls:
            l = row.get(i)
            if l is None:
                cells.append("-")
                continue
            # Each implementation against the unit it computes on (AMX tiles or FMA lanes).
            lr = l.get("roofline") or {}
            pct = lr.get("pct")
            cells.append(f"{l['gbps']:.2f} ({pct:.0f} % {lr['bound'][:3]})" if pct is not None else f"{l['gbps']:.2f}")
            if i != "simple":
                best = max(best, l["gbps"])
        o = peer.get(shape)
        if o and "gbps" in o:
            cells += [f"{o['gbps']:.2f}", f"{best / o['gbps']:.2f}x"]
        else:
            cells += ["-", "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
