#!/usr/bin/env python3
"""glibc beside decodelab's stream points: memcpy for each `copy` point and memset for each
`write` point of a results.jsonl, over the same bytes, split across as many threads as the
run used (each thread one contiguous part, as rayon's chunks are), timed the same way
(warm-up, median of the reps). Prints one JSON line per point, in scripts/cpu_table.py's
peer format. Needs only the standard library (ctypes releases the GIL for each call).

    python3 scripts/libc_reference.py RESULTS.jsonl [--reps N] > libc.jsonl
"""
import argparse
import ctypes
import ctypes.util
import json
import mmap
import statistics
import sys
import threading
import time

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def buffer(n):
    """n bytes of anonymous memory, touched once (so no rep pays its page faults): the map
    (which the caller keeps while it uses the address) and its address."""
    m = mmap.mmap(-1, n)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    libc.memset(addr, 1, n)
    return m, addr


def timed(parts):
    """Run each part's call on a thread of its own, all started together: seconds taken."""
    start = threading.Barrier(len(parts) + 1)

    def work(call):
        start.wait()
        call()

    threads = [threading.Thread(target=work, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def split(n, k):
    """k contiguous (offset, length) parts of n bytes, on 64-byte lines."""
    step = ((n + k - 1) // k + 63) // 64 * 64
    return [(o, min(step, n - o)) for o in range(0, n, step)]


def measure(op, n, threads, warmup, reps):
    dst_map, dst = buffer(n)
    if op == "copy":
        src_map, src = buffer(n)
        parts = [lambda o=o, l=l: libc.memcpy(dst + o, src + o, l) for o, l in split(n, threads)]
    else:
        parts = [lambda o=o, l=l: libc.memset(dst + o, 7, l) for o, l in split(n, threads)]
    for _ in range(warmup):
        timed(parts)
    return statistics.median(timed(parts) for _ in range(reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    done = set()
    for line in open(a.results):
        l = json.loads(line)
        if l.get("kernel") != "stream" or l["params"]["op"] not in ("copy", "write"):
            continue
        op, n = l["params"]["op"], l["params"]["bytes"]
        if (op, n) in done:
            continue
        done.add((op, n))
        threads = int(l.get("env", {}).get("threads", "1"))
        median = measure(op, n, threads, a.warmup, a.reps)
        name = "memcpy" if op == "copy" else "memset"
        # GB/s of the bytes decodelab counts for the point (a copy reads and writes).
        print(json.dumps({
            "point": l["point"],
            "kernel": "stream",
            "params": l["params"],
            "peer": f"glibc {name}, {threads} threads",
            "median_s": median,
            "gbps": l["bytes"] / median / 1e9,
        }), flush=True)
        print(f"{op} {n} B: glibc {name} {l['bytes'] / median / 1e9:.1f} GB/s", file=sys.stderr)


if __name__ == "__main__":
    main()
