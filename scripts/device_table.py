#!/usr/bin/env python3
"""One table from a device run: implementation x shape, with GB/s, % of the same run's stream
read (same backend, same card), x cuda (a wgpu line's GB/s over the best cuda GB/s at that
shape: the WGSL goals' measure) and x PyTorch (PyTorch's time / ours: above 1 is faster).
Reads decodelab results.jsonl files and scripts/torch_reference.py's output; prints Markdown.

    python3 scripts/device_table.py RESULTS.jsonl [RESULTS.jsonl ...] [--torch TORCH.jsonl]
"""
import argparse
import json
import os


def shape_key(line):
    """What identifies a shape across implementations and math modes."""
    params = {k: v for k, v in line["params"].items() if k != "math"}
    return line["kernel"], json.dumps(params, sort_keys=True)


def label(line):
    p = line["params"]
    k = line["kernel"]
    if k == "stream":
        return f'{p["op"]} {p["bytes"] / 2**30:g} GiB'
    if k == "kv_decode" and p["attention"] == "mla":
        s = f'mla b{p["batch"]} h{p["q_heads"]} {p["kv_lora_rank"]}+{p["rope_dim"]} ctx{p["context"]} p{p["page_size"]} {p["kv_dtype"]}'
    elif k == "kv_decode":
        s = f'gqa b{p["batch"]} {p["q_heads"]}/{p["kv_heads"]} d{p["head_dim"]} ctx{p["context"]} p{p["page_size"]} {p["kv_dtype"]}'
    else:
        s = f'E{p["experts"]} k{p["top_k"]} T{p["batch"]} {p["d_in"]}->{p["d_out"]} {p["weight_dtype"]} U{p["experts_touched"]}'
    return s + (f' math={p["math"]}' if p.get("math", "f32") != "f32" else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--torch")
    a = ap.parse_args()
    lines = []
    for path in a.results:
        if os.path.exists(path):
            lines += [json.loads(t) for t in open(path) if t.strip()]
    torch = {}
    if a.torch and os.path.exists(a.torch):
        for t in open(a.torch):
            if t.strip():
                r = json.loads(t)
                if "params" in r:  # older reference files named shapes by label only
                    torch[shape_key(r)] = r
    if not lines:
        print("no results")
        return
    devices = sorted({f'{l["backend"]}: {l["device"]}' for l in lines})
    print("Devices: " + "; ".join(devices) + "\n")
    # The best cuda GB/s per shape: what the WGSL goals are stated against (x cuda).
    best_cuda = {}
    for l in lines:
        if l["backend"] == "cuda" and l["check"]["pass"]:
            k = shape_key(l)
            best_cuda[k] = max(best_cuda.get(k, 0.0), l["gbps"])
    print("| kernel | shape | backend | impl | GB/s | % stream read | x cuda | x torch | torch GB/s | rel err | check |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    order = {}
    for l in lines:
        order.setdefault(shape_key(l), len(order))
    f = lambda x, d=0: "-" if x is None else f"{x:.{d}f}"
    for l in sorted(lines, key=lambda l: (order[shape_key(l)], l["params"].get("math", ""), l["backend"], l.get("impl", ""))):
        t = torch.get(shape_key(l))
        x = None
        if t and t.get("median_s") and l["time_s"]["median"] > 0:
            x = t["median_s"] / l["time_s"]["median"]
        c = best_cuda.get(shape_key(l))
        xc = l["gbps"] / c if c and l["backend"] != "cuda" else None
        err = l["check"].get("rel_l2_err")
        ok = "pass" if l["check"]["pass"] else "FAIL " + (l["check"].get("reason") or "")
        print(f'| {l["kernel"]} | {label(l)} | {l["backend"]} | {l.get("impl") or "-"} | {f(l["gbps"])} | '
              f'{f(l.get("pct_of_stream"), 1)} | {f(xc, 2)} | {f(x, 2)} | {f(t.get("gbps") if t else None)} | '
              f'{"-" if err is None else f"{err:.1e}"} | {ok} |')
    skipped = [t for t in torch.values() if "median_s" not in t]
    if skipped:
        print("\nPyTorch not compared: " + "; ".join(sorted({f'{t["kernel"]}: {t["what"]}' for t in skipped})))


if __name__ == "__main__":
    main()
