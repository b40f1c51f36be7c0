#!/usr/bin/env bash
# The broad device check (scripts/device-perf.sh is the five-minute perf loop): a dumped run
# recomputed by numpy, device-check.yaml on cuda and wgpu with energy, every split on virtual
# devices, PyTorch. Build here (scripts/build-dist.sh --gl), then through the device tool,
# with carry [dist, .gl]:  bash scripts/device-check.sh
# Everything lands in $OUT (at most 8 files): the table is printed last.
set -uo pipefail
OUT="${OUT:-/tmp/device-check}"
mkdir -p "$OUT"
BIN="${BIN:-dist/decodelab}"
log="$OUT/log.txt"
exec > >(tee "$log") 2>&1

source scripts/device-env.sh

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
date -u
"$BIN" --version
"$BIN" devices
"$BIN" kernels --arch sm_90 > "$OUT/kernels.txt" 2>&1; tail -1 "$OUT/kernels.txt"

# Small points on every backend, dumped, then recomputed with numpy.
rm -rf /tmp/dc-dump
"$BIN" run experiments/device-check-dump.yaml --no-progress --out /tmp/dc-small --dump /tmp/dc-dump
python3 scripts/check_dump.py /tmp/dc-dump > "$OUT/dump-check.txt" 2>&1; tail -1 "$OUT/dump-check.txt"

# The sweep: cuda, then wgpu (Vulkan on the same card).
"$BIN" run experiments/device-check.yaml --backend cuda --no-progress --out /tmp/dc-cuda
cp /tmp/dc-cuda/results.jsonl "$OUT/results-cuda.jsonl"
"$BIN" run experiments/device-check.yaml --backend wgpu --no-progress --out /tmp/dc-wgpu
cp /tmp/dc-wgpu/results.jsonl "$OUT/results-wgpu.jsonl" 2>/dev/null

# Every split on four virtual devices of this GPU (NCCL with one rank), and the link kernel.
"$BIN" run experiments/device-check-split.yaml --no-progress --out /tmp/dc-split
cp /tmp/dc-split/results.jsonl "$OUT/results-split.jsonl" 2>/dev/null

# PyTorch on the same card, same shapes.
PYTHONUNBUFFERED=1 python3 scripts/torch_reference.py "$OUT/results-cuda.jsonl" > "$OUT/torch.jsonl"

python3 scripts/device_table.py "$OUT"/results-cuda.jsonl "$OUT"/results-wgpu.jsonl --torch "$OUT/torch.jsonl" | tee "$OUT/table.txt"
