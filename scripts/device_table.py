#!/usr/bin/env python3
"""The device check's last word: kernel, shape, cuda GB/s, wgpu GB/s, torch GB/s, % of spec,
error. Reads decodelab results.jsonl files and scripts/torch_reference.py output.

    python3 scripts/device_table.py RESULTS.jsonl [RESULTS.jsonl ...] --torch TORCH.jsonl
"""
import argparse
import json


def label(l):
    p = l["params"]
    if l["kernel"] == "stream":
        return f'{p["op"]} {p["bytes"] >> 30}GiB'
    if l["kernel"] == "kv_decode":
        if p["attention"] == "mla":
            return f'mla b{p["batch"]} hq{p["q_heads"]} d{p["kv_lora_rank"]}+{p["rope_dim"]} ctx{p["context"]} p{p["page_size"]} {p["kv_dtype"]}'
        return f'gqa b{p["batch"]} hq{p["q_heads"]}/{p["kv_heads"]} d{p["head_dim"]} ctx{p["context"]} p{p["page_size"]} {p["kv_dtype"]}'
    return f'E{p["experts"]} k{p["top_k"]} T{p["batch"]} {p["d_out"]}x{p["d_in"]} {p["weight_dtype"]} U{p["experts_touched"]}'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--torch")
    a = ap.parse_args()
    rows = {}
    for path in a.results:
        for line in open(path):
            l = json.loads(line)
            key = (l["kernel"], label(l))
            r = rows.setdefault(key, {})
            r[l["backend"]] = l["gbps"]
            r["spec"] = l.get("pct_of_spec")
            err = l["check"]["rel_l2_err"]
            r["err"] = max(r.get("err") or 0, err if err is not None else float("inf"))
            r["pass"] = r.get("pass", True) and l["check"]["pass"]
    torch_rows = {}
    if a.torch:
        for line in open(a.torch):
            t = json.loads(line)
            torch_rows[(t["kernel"], t["shape"].split(" U")[0])] = t["gbps"]
    f = lambda x: "-" if x is None else f"{x:.0f}"
    print(f'{"kernel":<12} {"shape":<46} {"cuda GB/s":>10} {"wgpu GB/s":>10} {"torch GB/s":>10} {"% spec":>7} {"rel err":>9}')
    for (kernel, shape), r in sorted(rows.items()):
        tkey = (kernel, shape.replace("read", "copy").split(" U")[0])
        t = torch_rows.get(tkey) if not shape.startswith("read") else None
        spec = None if r.get("cuda") is None else r.get("spec")
        print(f'{kernel:<12} {shape:<46} {f(r.get("cuda")):>10} {f(r.get("wgpu")):>10} {f(t):>10} '
              f'{"-" if spec is None else f"{spec:.0f}":>7} {r["err"]:>9.1e}{"" if r["pass"] else " FAIL"}')


if __name__ == "__main__":
    main()
