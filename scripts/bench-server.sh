#!/usr/bin/env bash
# Server benchmarks: upload throughput (binary fast path and seed JSON path) against the founding
# document's Python server on the same file in the same run, live latency p50/p95, live streams
# kept at real time, idle memory per connection. Writes the "## Server" section of
# docs/BENCHMARKS.md (replacing it).
#
# Usage: scripts/bench-server.sh [--upload-mb 200] [--upload-runs 5] [--runs 5] [--max-streams 8] [--only upload|live|idle]
# Needs: python3 with `websockets` (installed here if missing), ../shared (models, corpus, baselines).
set -euo pipefail

cd "$(dirname "$0")/.."
models="$(cd ../shared/models && pwd)"
python3 -c "import websockets" 2>/dev/null || python3 -m pip install --quiet websockets
cargo build --release --quiet --bin earshot
bin="${CARGO_TARGET_DIR:-target}/release/earshot"
ulimit -n 8192 || true
out="$(mktemp)"
python3 scripts/bench_server.py "$bin" "$models" "$out" "$@"
python3 scripts/set-benchmark-section.py docs/BENCHMARKS.md "Server" "$out"
rm -f "$out"
