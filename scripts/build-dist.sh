#!/usr/bin/env bash
# Build here what a lent GPU machine runs (it has no Rust): the release binary and the
# integration-test executable (`it`: the conformance, split and cuda suites run on a GPU
# through its `cuda::` filter), stripped, under dist/; and, with --gl, the Vulkan loader debs under .gl/ (the device README's recipe) so
# the wgpu backend finds the NVIDIA ICD there. Then, through the device tool:
#   run(command="bash scripts/device-perf.sh", carry=["dist", ".gl"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release
mkdir -p dist/tests
cp target/release/decodelab dist/decodelab
# The test executable (cargo prints its hashed path as JSON).
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
want = {"it"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], "dist/tests/" + m["target"]["name"])
        want.discard(m["target"]["name"])
if want:
    sys.exit(f"test executables not built: {sorted(want)}")
'
strip dist/decodelab dist/tests/*
git rev-parse --short HEAD > dist/COMMIT
git diff --quiet HEAD -- src kernels shaders tests || echo "+uncommitted" >> dist/COMMIT

if [ "${1:-}" = "--gl" ]; then
    grep -qx '/.gl/' .git/info/exclude || echo /.gl/ >> .git/info/exclude
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update -qq
    (cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh dist ${1:+.gl} 2>/dev/null
