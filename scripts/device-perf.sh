#!/usr/bin/env bash
# The GPU loop: five minutes on a lent H100 or H200 that has the driver, a CUDA toolkit and
# PyTorch but no Rust. Build here first (scripts/build-dist.sh --gl), then through the device
# tool, carrying the binaries and the Vulkan loader:
#   run(command="bash scripts/device-perf.sh", carry=["dist", ".gl"], timeout_s=420)
# Steps, most important first, each under its own limit and all under one deadline
# (BUDGET_S, default 300 s); results land in $OUT as they come, so a killed step still
# returns what it finished:
#   1. the perf sweep on cuda: experiments/device-perf.yaml, every implementation, energy off,
#      every point checked by the oracle                                 -> results-cuda.jsonl
#   2. PyTorch at the same shapes                                         -> torch.jsonl
#   3. the table: implementation x shape, GB/s, % of stream read, x torch -> table.md
#   4. the cuda conformance, split and compile/SASS suites, DECODELAB_REQUIRE=cuda -> tests.txt
#   5. the headline GQA and expert shapes on wgpu (Vulkan on the same card), every
#      implementation (simple and unrolled), and the table again
#   6. every split kind as a ranked run on cuda (`mpirun -n 1`), where the machine has an
#      mpirun                                                          -> results-ranks.jsonl
#   7. the SASS budget with this machine's own toolkit (NVRTC and nvdisasm of /usr/local/cuda
#      where it has one)                                                 -> sass.txt
# On an H100 (80 GB; a plain device call gets one first) the points that do not fit are
# dropped: `decodelab check` lists each point's device memory, and the sweep runs with
# --only of those that fit this card; card.txt and the table say which card it was.
set -uo pipefail
OUT="${OUT:-/tmp/device-perf}"
mkdir -p "$OUT"
BIN="${BIN:-dist/decodelab}"
TESTS="${TESTS:-dist/tests}"
BUDGET_S="${BUDGET_S:-300}"
exec > >(tee "$OUT/log.txt") 2>&1
start=$(date +%s)

# step NAME LIMIT_S COMMAND...: run under min(LIMIT_S, what the deadline leaves), log how it
# ended, never stop the script.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - start) - 5))
    if [ "$left" -lt 10 ]; then
        echo "== $name: SKIPPED, ${left}s left of the ${BUDGET_S}s budget"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s, $((BUDGET_S - left - 5))s in)"
    local t0=$(date +%s)
    timeout -k 5 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - t0))s$([ $rc = 124 ] && echo ' (timed out)')"
}

source scripts/device-env.sh
export PYTHONUNBUFFERED=1

{
    date -u
    echo "binary: $(cat dist/COMMIT 2>/dev/null || echo '?') $("$BIN" --version 2>&1)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv
    nproc
    "$BIN" devices
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# The card, and the points of the sweep that fit its memory (with 10 % to spare).
card="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)"
mem_mib="$(echo "$card" | awk -F', ' '{print $2}')"
echo "card: ${card:-unknown}" | tee "$OUT/card.txt"
FIT=()
if [ -n "$mem_mib" ]; then
    fit="$("$BIN" check experiments/device-perf.yaml --backend cuda 2>/dev/null | python3 scripts/points_that_fit.py "$mem_mib")"
    if [ -n "$fit" ] && [ "$fit" != "all" ]; then
        FIT=(--only "$fit")
        echo "dropped on this card (over ${mem_mib} MiB): the points not in $fit" | tee -a "$OUT/card.txt"
    fi
fi

table() {
    python3 scripts/device_table.py "$OUT/results-cuda.jsonl" "$OUT/results-wgpu.jsonl" \
        --torch "$OUT/torch.jsonl" > "$OUT/table.md" 2>&1
    { echo; echo "card: ${card:-unknown}"; } >> "$OUT/table.md"
    cat "$OUT/table.md"
}

# 1. Every implementation at the headline shapes; results copied even from a killed run.
rm -rf /tmp/dp-cuda /tmp/dp-wgpu
step "perf sweep (cuda)" 150 "$BIN" run experiments/device-perf.yaml "${FIT[@]}" --no-progress --out /tmp/dp-cuda
cp /tmp/dp-cuda/results.jsonl "$OUT/results-cuda.jsonl" 2>/dev/null

# 2. PyTorch at the same shapes, then 3. the table.
[ -s "$OUT/results-cuda.jsonl" ] &&
    step "pytorch" 60 sh -c "python3 scripts/torch_reference.py '$OUT/results-cuda.jsonl' > '$OUT/torch.jsonl'"
table

# 4. The suites that have never run on a GPU: cuda conformance and splits (every
#    implementation), NVRTC compiles and the SASS budget for this machine's toolkit.
run_tests() {
    export DECODELAB_REQUIRE=cuda
    local rc=0
    # The suites of the `it` binary that need a GPU: conformance::cuda::, split::cuda::, and
    # cuda:: itself (the compile checks, the SASS budget; "cuda::" alone matches all three).
    echo "--- conformance::cuda::"
    "$TESTS"/it conformance::cuda:: --test-threads 4 || rc=1
    echo "--- split::cuda::"
    "$TESTS"/it split::cuda:: --test-threads 4 || rc=1
    echo "--- cuda::"
    "$TESTS"/it cuda:: --skip conformance:: --skip split:: --test-threads 4 || rc=1
    return $rc
}
export TESTS OUT
step "cuda suites" 100 bash -c "$(declare -f run_tests); run_tests > \"\$OUT/tests.txt\" 2>&1"
grep -E "^--- |^test result|FAILED|panicked|SKIPPED" "$OUT/tests.txt"

# 5. The WGSL kernels on the same card: headline GQA, then expert shapes (last: the biggest).
step "perf sweep (wgpu)" 60 "$BIN" run experiments/device-perf.yaml --backend wgpu --no-progress \
    --only kernel=stream --only attention=gqa,batch=16 --only kernel=expert_gemv,batch=1 \
    --out /tmp/dp-wgpu
cp /tmp/dp-wgpu/results.jsonl "$OUT/results-wgpu.jsonl" 2>/dev/null
table

# 6. The multi-process path on CUDA: one rank (this machine has one GPU), every split kind.
if command -v mpirun >/dev/null; then
    step "ranks (cuda, mpirun -n 1)" 40 mpirun --allow-run-as-root -n 1 "$BIN" run \
        experiments/ranks.yaml --backend cuda --no-progress --rank-timeout 30 --out /tmp/dp-ranks
    cp /tmp/dp-ranks/results.jsonl "$OUT/results-ranks.jsonl" 2>/dev/null
else
    echo "== ranks (cuda, mpirun -n 1): SKIPPED, no mpirun on this machine"
fi
# 7. The SASS budget as this machine's toolkit compiles it (device-env.sh points NVRTC, the
#    headers and nvdisasm at /usr/local/cuda where it exists).
step "sass (this toolkit)" 30 sh -c "'$BIN' kernels --arch sm_90 --sass > '$OUT/sass.txt' 2>&1"
echo "== done in $(($(date +%s) - start))s"
