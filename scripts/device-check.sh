#!/usr/bin/env bash
# The one script to run on a lent GPU (see DEVELOPERS.md). Build here, carry the binary:
#   cargo build --release && mkdir -p dist && cp target/release/decodelab dist/
# then, through the device tool, with carry [dist, .gl] (.gl: Vulkan loader debs, see the
# device README):  bash scripts/device-check.sh
# Everything lands in $OUT (at most 8 files): the table is printed last.
set -uo pipefail
OUT="${OUT:-/tmp/device-check}"
mkdir -p "$OUT"
BIN="${BIN:-dist/decodelab}"
log="$OUT/log.txt"
exec > >(tee "$log") 2>&1

# Vulkan loader for the wgpu backend, if carried.
if [ -d .gl ] && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
# NVRTC and CUDA headers: the toolkit if present, else PyTorch's pip-installed nvidia wheels.
nv="$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])' 2>/dev/null || true)"
for d in /usr/local/cuda/lib64 "$nv/cuda_nvrtc/lib"; do [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
for d in /usr/local/cuda/include "$nv/cuda_runtime/include"; do
    if [ -f "$d/cuda_fp8.h" ]; then export DECODELAB_CUDA_INCLUDE="$d"; break; fi
done
# NCCL (cuda splits): the pip wheel ships libnccl.so.2; cudarc loads libnccl.so.
for d in "$nv/nccl/lib" /usr/lib/x86_64-linux-gnu; do
    if [ -f "$d/libnccl.so.2" ]; then
        mkdir -p /tmp/nccl-lib && ln -sf "$d/libnccl.so.2" /tmp/nccl-lib/libnccl.so
        export LD_LIBRARY_PATH="/tmp/nccl-lib:$d:${LD_LIBRARY_PATH:-}"
        break
    fi
done
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

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
