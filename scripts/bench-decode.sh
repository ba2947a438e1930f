#!/usr/bin/env bash
# Decode + resample speed per corpus format (single thread) against ffmpeg on the same files,
# written into docs/BENCHMARKS.md under "## Decode + resample" (the section is replaced).
#
# Usage: scripts/bench-decode.sh [CORPUS_DIR]      (default: ../shared/corpus)
# Needs: ffmpeg on PATH. Set CARGO_TARGET_DIR to share a build directory.
set -euo pipefail

cd "$(dirname "$0")/.."
corpus="${1:-../shared/corpus}"
doc=docs/BENCHMARKS.md

command -v ffmpeg >/dev/null || { echo "ffmpeg is needed for the comparison: install it" >&2; exit 1; }
[ -f "$corpus/MANIFEST.tsv" ] || { echo "corpus not found at $corpus" >&2; exit 1; }

cargo build --release --quiet --example bench_decode
bin="${CARGO_TARGET_DIR:-target}/release/examples/bench_decode"

table="$(taskset -c 0 "$bin" "$corpus" 2>/dev/null || "$bin" "$corpus")"

cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
cores="$(nproc)"
section="$(cat <<MD
## Decode + resample

Open + decode + mix to mono + resample to 16 kHz f32, one thread, × real time (higher is faster).
earshot runs in process (\`AudioStream\`); ffmpeg runs as
\`ffmpeg -threads 1 -filter_threads 1 -i FILE -ar 16000 -ac 1 -f f32le -\`, once as one process per
file (how a CLI pipeline uses it: start-up dominates short files) and once with \`-stream_loop\` over
≥ 300 s of audio so its start-up is amortised (pure decode + resample speed). The last column is
earshot's speed over ffmpeg's amortised speed (> 1 = earshot faster). Every measurement repeats
until ≥ 1 s has passed. Run: \`scripts/bench-decode.sh\`.

Machine: ${cpu}, ${cores} cores ($(uname -m)); load average at start: $(cut -d' ' -f1-3 /proc/loadavg).
Date: $(date -u +%Y-%m-%d). ffmpeg $(ffmpeg -version | head -1 | cut -d' ' -f3). Release build.

${table}
MD
)"

printf '%s\n' "$section" | python3 scripts/set-benchmark-section.py "$doc" "Decode + resample" -
echo "$section"
