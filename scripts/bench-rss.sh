#!/usr/bin/env bash
# Peak memory of `earshot transcribe` on 2 minutes vs 60 minutes of audio: memory must not grow
# with the input's length (goal: ratio <= 1.3). Writes the section "## Peak memory (long audio)"
# of docs/BENCHMARKS.md (the section is replaced).
#
# Inputs are built from the corpus: one cycle of English speech (the 146 s JFK inaugural Ogg,
# en_jfk.wav, en_arctic_a0024.wav, en_harvard_birch_canoe.wav, with short pauses) looped to the
# wanted length and encoded as Ogg/Vorbis 16 kHz mono, so the 60-minute file stays ~10 MB.
# Each run is `earshot transcribe` (tiny.en, 2 threads, txt into a temp --output-dir) under
# /usr/bin/time -v; "Maximum resident set size" is the peak RSS.
#
# Usage: scripts/bench-rss.sh [SHORT_SECS] [LONG_SECS]     (default 120 and 3600)
#        PROFILE=release scripts/bench-rss.sh               (default: dev; whisper.cpp and the
#                                                             DSP crates are opt-level 3 in dev)
# Needs: ffmpeg with libvorbis, GNU time at /usr/bin/time, the corpus in ../shared/corpus and
# the models in $EARSHOT_MODEL_MIRROR (default ../shared/models). The 60-minute run takes
# ~5-10 minutes on 2 cores.
set -euo pipefail

cd "$(dirname "$0")/.."
short="${1:-120}"
long="${2:-3600}"
profile="${PROFILE:-dev}"
corpus=../shared/corpus
export EARSHOT_MODEL_MIRROR="${EARSHOT_MODEL_MIRROR:-$(cd ../shared/models 2>/dev/null && pwd)}"
doc=docs/BENCHMARKS.md

command -v ffmpeg >/dev/null || { echo "ffmpeg is needed to build the inputs: install it" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is needed: apt-get install time" >&2; exit 1; }
[ -f "$corpus/MANIFEST.tsv" ] || { echo "corpus not found at $corpus" >&2; exit 1; }
[ -f "$EARSHOT_MODEL_MIRROR/ggml-tiny.en.bin" ] || {
  echo "ggml-tiny.en.bin not found: set EARSHOT_MODEL_MIRROR or run scripts/download-model.sh" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ "$profile" = release ]; then
  cargo build --release --quiet --bin earshot
  built="${CARGO_TARGET_DIR:-target}/release/earshot"
else
  cargo build --quiet --bin earshot
  built="${CARGO_TARGET_DIR:-target}/debug/earshot"
fi
# A private copy: a shared target dir may be rebuilt by someone else while we measure.
cp "$built" "$work/earshot"

# One cycle of speech at 16 kHz mono, then looped to each length.
inputs=(en_JFK_inaugural_146s.ogg en_jfk.wav en_arctic_a0024.wav en_harvard_birch_canoe.wav)
args=() filter=""
for i in "${!inputs[@]}"; do
  args+=(-i "$corpus/${inputs[$i]}")
  filter+="[$i:a]aresample=16000,aformat=channel_layouts=mono,apad=pad_dur=1.5[a$i];"
done
for i in "${!inputs[@]}"; do filter+="[a$i]"; done
filter+="concat=n=${#inputs[@]}:v=0:a=1[out]"
ffmpeg -loglevel error -y "${args[@]}" -filter_complex "$filter" -map '[out]' "$work/cycle.wav"
for secs in "$short" "$long"; do
  ffmpeg -loglevel error -y -stream_loop -1 -i "$work/cycle.wav" -t "$secs" \
    -c:a libvorbis -q:a 2 "$work/input_${secs}s.ogg"
done

measure() { # secs -> "peak_kib wall_secs segments_bytes"
  local secs="$1" out="$work/out_$1"
  mkdir -p "$out"
  /usr/bin/time -v -o "$work/time_$secs.txt" "$work/earshot" --log warn transcribe \
    --models-dir "$work/models" --model tiny.en --threads 2 --output-dir "$out" \
    "$work/input_${secs}s.ogg" 2>"$work/stderr_$secs.txt" \
    || { cat "$work/stderr_$secs.txt" >&2; exit 1; }
  local peak wall
  peak="$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$work/time_$secs.txt")"
  wall="$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): *//p' "$work/time_$secs.txt")"
  echo "$peak $wall $(cat "$out"/* | wc -c)"
}

# Fetch (copy + verify) the models first so the runs measure transcription only.
"$work/earshot" --log warn fetch-model tiny.en --models-dir "$work/models" >/dev/null
"$work/earshot" --log warn fetch-model silero-v6.2.0 --models-dir "$work/models" >/dev/null

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
read -r short_kib short_wall short_bytes < <(measure "$short")
read -r long_kib long_wall long_bytes < <(measure "$long")
ratio="$(python3 -c "print(f'{$long_kib / $short_kib:.3f}')")"
mib() { python3 -c "print(f'{$1 / 1024:.1f}')"; }

cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
section="$(cat <<MD
## Peak memory (long audio)

Peak resident memory of \`earshot transcribe\` (tiny.en, 2 threads, Silero VAD windows, txt into
\`--output-dir\`) on ${short} s and on ${long} s of speech, read from \`/usr/bin/time -v\` ("Maximum
resident set size"). Inputs: one cycle of corpus speech (en_JFK_inaugural_146s.ogg, en_jfk.wav,
en_arctic_a0024.wav, en_harvard_birch_canoe.wav, 1.5 s pauses) looped with ffmpeg to each length,
Ogg/Vorbis 16 kHz mono. Goal: long / short ≤ 1.3 (memory does not grow with the input).
Run: \`scripts/bench-rss.sh\` (${profile} build; whisper.cpp is built with opt-level 3 in both).

Machine: ${cpu}, $(nproc) cores ($(uname -m)), shared with other builds; load average at start: ${load_before}.
Date: $(date -u +%Y-%m-%d).

| input | peak RSS | wall time | transcript |
|---|---:|---:|---:|
| ${short} s Ogg/Vorbis | $(mib "$short_kib") MiB | ${short_wall} | ${short_bytes} bytes |
| ${long} s Ogg/Vorbis | $(mib "$long_kib") MiB | ${long_wall} | ${long_bytes} bytes |

Ratio long / short: **${ratio}**.
MD
)"

printf '%s\n' "$section" | python3 scripts/set-benchmark-section.py "$doc" "Peak memory (long audio)" -
echo "$section"
