#!/usr/bin/env python3
"""PyTorch references on the same card, timed with CUDA events (warm-up, median, L2 flushed):
a device-to-device copy (bandwidth), scaled_dot_product_attention at the kv_decode shapes of
experiments/device-check.yaml (contiguous KV, no paging), and a batched matmul at the
expert_gemv shapes (the touched experts' weights against their tokens). One JSON object per
line on stdout, with the same minimum-bytes rules as decodelab's byte tables."""
import json
import math
import sys

import torch

dev = torch.device("cuda")
flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)


def timed(fn, reps=30, warmup=5):
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


def emit(kernel, shape, nbytes, t):
    print(json.dumps({"kernel": kernel, "shape": shape, "bytes": nbytes, "median_s": t, "gbps": nbytes / t / 1e9}), flush=True)


def main():
    n = 4 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    emit("stream", "copy 4GiB", 2 * n, timed(lambda: b.copy_(a)))
    del a, b
    torch.cuda.empty_cache()

    for dtype, dname in [(torch.bfloat16, "bf16")]:
        for batch in [1, 16]:
            for ctx in [4096, 32768, 131072]:
                # GQA 64/8, d128
                q = torch.randn(batch, 64, 1, 128, dtype=dtype, device=dev)
                k = torch.randn(batch, 8, ctx, 128, dtype=dtype, device=dev)
                v = torch.randn_like(k)
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                nbytes = batch * ctx * 8 * 256 * 2 + batch * 64 * 128 * 2 * 2
                emit("kv_decode", f"gqa b{batch} hq64/8 d128 ctx{ctx} p16 {dname}", nbytes, timed(fn))
                del q, k, v
                # MLA absorbed: 64 heads over one 576-wide latent (V = its first 512)
                q = torch.randn(batch, 64, 1, 576, dtype=dtype, device=dev)
                kv = torch.randn(batch, 1, ctx, 576, dtype=dtype, device=dev)
                fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, kv, kv[..., :512], enable_gqa=True)
                nbytes = batch * ctx * 576 * 2 + batch * 64 * (576 + 512) * 2
                emit("kv_decode", f"mla b{batch} hq64 d512+64 ctx{ctx} p64 {dname}", nbytes, timed(fn))
                del q, kv
                torch.cuda.empty_cache()

    # expert_gemv: U distinct experts touched by `batch` tokens with top-8 of 384.
    for batch in [1, 16, 64]:
        u = round(384 * (1 - (1 - 8 / 384) ** batch))
        tokens = max(1, math.ceil(batch * 8 / u))
        w = torch.randn(u, 2048, 7168, dtype=torch.bfloat16, device=dev)
        x = torch.randn(u, 7168, tokens, dtype=torch.bfloat16, device=dev)
        fn = lambda: torch.bmm(w, x)
        nbytes = u * 2048 * 7168 * 2 + batch * (7168 + 2048) * 4
        emit("expert_gemv", f"E384 k8 T{batch} 2048x7168 bf16 U{u}", nbytes, timed(fn))
        del w, x
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
