#!/usr/bin/env bash
# The cpu bench: experiments/cpu-perf.yaml (simple and every vector path, both ceilings in the
# same run), ONNX Runtime at the same shapes (a venv of its own under target/, not CI's),
# glibc memcpy / memset beside the stream points, and the table. Writes
# bench/<date>-cpu-<model>/ with the command, the results and table.md.
#   scripts/cpu-bench.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //; s/([^)]*)//g; s/ \+/-/g; s/-$//' | tr 'A-Z' 'a-z')"
out="${1:-bench/$(date +%F)-cpu-$model}"
mkdir -p "$out"
cargo build --release --quiet
venv=target/ort-venv
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet onnxruntime onnx numpy; }
cmd=(target/release/decodelab run experiments/cpu-perf.yaml --out "$out/run")
echo "${cmd[*]}" > "$out/command.txt"
"${cmd[@]}" | tee "$out/run.txt"
echo "$venv/bin/python scripts/ort_reference.py $out/run/results.jsonl" >> "$out/command.txt"
"$venv/bin/python" scripts/ort_reference.py "$out/run/results.jsonl" > "$out/ort.jsonl"
echo "python3 scripts/libc_reference.py $out/run/results.jsonl" >> "$out/command.txt"
python3 scripts/libc_reference.py "$out/run/results.jsonl" > "$out/libc.jsonl"
python3 scripts/cpu_table.py "$out/run/results.jsonl" "$out/ort.jsonl" "$out/libc.jsonl" > "$out/table.md"
cat "$out/table.md"
