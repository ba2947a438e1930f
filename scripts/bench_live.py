#!/usr/bin/env python3
"""Live latency benchmark: how soon each spoken word is shown and made final by a live stream.

Run through scripts/bench-live (it builds the release binary). For each input:
  1. builds the audio (16 kHz mono s16le WAV): `tune` and `report` are corpus English speech
     concatenated without pauses (clips trimmed of leading and trailing silence), `jfk146` is
     en_JFK_inaugural_146s.ogg as it is;
  2. transcribes it in batch (`earshot transcribe --format verbose_json`, the batch path) for the
     reference text, and takes each word's end time from whisper-cli 1.9.3's DTW alignment
     (`-dtw tiny.en`, matched to the batch words by edit distance; words it does not line up
     with are left out of the latencies). Whisper's token timestamps, which the batch transcript
     carries, drift by seconds over applause and at the audio's end (`report`: "Finally" 2.4 s
     early, its last ten words all at 63.99 s); `--word-times batch` still measures with them;
  3. streams it to a fresh release server at real time in 50 ms PCM frames over the live
     WebSocket protocol (docs/PROTOCOL.md §9), recording when each word is first shown (in a
     `transcript_partial` or a `transcript_segment`, at the same position with the same text as
     it is finally committed) and when it is made final (its `transcript_segment`);
  4. aligns the final live words to the batch words by edit distance and reports, over the
     matched words, word end → first shown and word end → final (p50/p95), the WER of the live
     final text against the batch text, and the `stream_lag` messages.

With --hog a CPU-bound process (a Python busy loop) runs beside the server from --hog-start
seconds into the stream until --hog-secs seconds before its end, after one run without it on
the same server (the baseline: some words are slow to settle whatever the load). The table
then also gives the final p95 of the words before and under the load, and how long after the
load ended the stream was back to normal (recovery: from the first word after which every run
of RECOVERY_WORDS words is final, at the median, no more than RECOVERY_SLACK later than the
same words in the baseline run, itself included; "never" when the input ended first). The
words of the input's last RECOVERY_TAIL_SECS are left out of it: the batch transcript's token
times may place several at the input's very end, and their latency swings by seconds between
any two runs (kept with the DTW times too, so that recovery reads the same on both rulers).

Tune on `tune`, report on `report` and `jfk146` (the inputs share no audio but the first 40 s of
the inaugural, which is in `tune` and `jfk146`).
Usage: bench_live.py EARSHOT_BIN MODELS_DIR [--inputs tune,report,jfk146] [--runs 1] [--hog]
                     [--hog-start 15] [--hog-secs 25] [--threads 2] [--server-arg=--flag ...] [--tuning K=V,...]
                     [--json OUT]

The server runs at the caller's priority. With the kernel's autogroup scheduling on
(/proc/sys/kernel/sched_autogroup_enabled), `nice` of processes in other sessions does not
yield the CPU to it; docs/BENCHMARKS.md "Live latency" says how the numbers there were taken.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import free_port, live_stream, norm_words, percentile, stop  # noqa: E402
from peer import whisper_cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
INAUGURAL = "en_JFK_inaugural_146s.ogg"
# (file, start s, end s or None): pieces concatenated in order.
INPUTS = {
    "tune": [("en_jfk.wav", 0, None), ("en_arctic_a0024.wav", 0, None),
             ("en_harvard_birch_canoe.wav", 0, None), ("en_stereo_diarization.wav", 0, None),
             ("en_one_two_three_44k.wav", 0, None), (INAUGURAL, 0, 40)],
    "report": [(INAUGURAL, 40, 104)],
    "jfk146": [(INAUGURAL, 0, None)],
}
FRAME_MS = 50
RECOVERY_WORDS = 5
RECOVERY_SLACK = 0.5
# Words this close to the input's end are left out of recovery (see the module docs).
RECOVERY_TAIL_SECS = 2.0


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def build_input(name, work):
    """The input's WAV: each piece decoded to 16 kHz mono, cut, trimmed of silence at both ends
    (only when more than one piece is joined), then joined."""
    out = work / f"{name}.wav"
    pieces = INPUTS[name]
    parts = []
    for i, (file, start, end) in enumerate(pieces):
        part = work / f"{name}-{i}.wav"
        cut = ["-ss", str(start)] + (["-to", str(end)] if end else [])
        run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(CORPUS / file), *cut,
             "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", str(part)])
        if len(pieces) > 1:
            trimmed = work / f"{name}-{i}-t.wav"
            trim = ["silence", "1", "0.05", "-45d"]
            run(["sox", str(part), str(trimmed), *trim, "reverse", *trim, "reverse"])
            part = trimmed
        parts.append(str(part))
    if len(parts) == 1:
        shutil.copy(parts[0], out)
    else:
        run(["sox", *parts, str(out)])
    return out


def batch_words(binary, models, wav):
    """(word, end) of the batch transcript, from `earshot transcribe --format verbose_json`."""
    env = dict(os.environ, EARSHOT_MODEL_MIRROR=str(models))
    with tempfile.TemporaryDirectory() as d:
        out = run([binary, "transcribe", str(wav), "--format", "verbose_json", "--models-dir", d,
                   "--log", "warn"], env=env)
    words = []
    for w in json.loads(out.stdout).get("words", []):
        words += [(n, w["end"]) for n in norm_words(w["word"])]
    return words


def dtw_words(cli, models, wav, threads):
    """(word, end) from whisper-cli's DTW token times (`-dtw tiny.en`, cross-attention aligned;
    whisper.cpp gives each token the time the alignment leaves it, i.e. its end). A word ends
    with its last token that holds a letter or digit: punctuation lasts into the pause after."""
    with tempfile.TemporaryDirectory() as d:
        run([str(cli), "-m", str(Path(models) / "ggml-tiny.en.bin"), "-f", str(wav),
             "-t", str(threads), "-dtw", "tiny.en", "-nfa", "-ojf", "-of", f"{d}/out", "-np"])
        doc = json.loads(Path(f"{d}/out.json").read_text())
    words = []  # [text, end]
    for segment in doc["transcription"]:
        for token in segment["tokens"]:
            text = token["text"]
            if token.get("t_dtw", -1) < 0 or text.startswith("[_") or not norm_words(text):
                continue
            if text.startswith(" ") or not words:
                words.append([text, 0.0])
            else:
                words[-1][0] += text
            words[-1][1] = token["t_dtw"] / 100
    return [(n, end) for text, end in words for n in norm_words(text)]


def timed(batch, dtw):
    """The batch words with the DTW end of the word each lines up with (by edit distance);
    None where none does."""
    _, pairs = align([w for w, _ in batch], [w for w, _ in dtw])
    ends = {i: dtw[j][1] for i, j in pairs}
    return [(w, ends.get(i)) for i, (w, _) in enumerate(batch)]



def start_server(binary, models, data, port, threads, extra, tuning=None):
    env = dict(os.environ, EARSHOT_MODEL_MIRROR=str(models))
    if tuning is not None:
        env["EARSHOT_LIVE_TUNING"] = tuning
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
            "--models-dir", str(data / "models"), *(["--log", "warn"] if not any(a.startswith("--log") for a in extra) else []), "--workers", "1",
            "--threads", str(threads), *extra]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("server did not start")




async def stream(url, pcm):
    """Streams s16le 16 kHz PCM at real time in 50 ms frames; returns (events, lag messages).
    events: (kind, seconds since the first frame, text) with kind "partial" or "final"."""
    events, _, lags, _, _ = await live_stream(url, pcm, realtime=True, frame_ms=FRAME_MS)
    return events, lags


def live_words(events):
    """Final live words with (word, first shown at, final at). A partial holds only the tail
    after the committed segments, so its word j is word committed + j of the speech."""
    finals = []
    for kind, t, text in events:
        if kind == "final":
            finals += [(w, t) for w in norm_words(text)]
    shown = [None] * len(finals)
    committed = 0
    for kind, t, text in events:
        words = norm_words(text)
        for j, w in enumerate(words):
            i = committed + j
            if i < len(finals) and shown[i] is None and finals[i][0] == w:
                shown[i] = t
        if kind == "final":
            committed += len(words)
    return [(w, s if s is not None else f, f) for (w, f), s in zip(finals, shown)]


def align(ref, hyp):
    """Levenshtein alignment of two word lists: (edits, [(ref index, hyp index)] of equal words)."""
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] == hyp[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif d[i][j] == d[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return d[n][m], pairs[::-1]



def measure(ref, events, hog=None, baseline=None):
    """Latencies of the matched words, WER, and under --hog (its start and end) the
    load/recovery figures against `baseline` (a quiet run's measure)."""
    live = live_words(events)
    edits, pairs = align([w for w, _ in ref], [w for w, _, _ in live])
    pairs = [(i, j) for i, j in pairs if ref[i][1] is not None]
    rows = [(ref[i][1], live[j][1] - ref[i][1], live[j][2] - ref[i][1]) for i, j in pairs]
    result = {
        "words": len(ref), "matched": len(pairs), "wer": edits / max(1, len(ref)),
        "shown": [s for _, s, _ in rows], "final": [f for _, _, f in rows],
        "ends": [end for end, _, _ in rows],
        "ref_index": [i for i, _ in pairs],
        "text": " ".join(w for w, _, _ in live),
        "reference": " ".join(w for w, _ in ref),
    }
    if hog is not None:
        start, until = hog
        normal = [f for end, _, f in rows if end < start]
        result["final_normal"] = normal
        result["final_loaded"] = [f for end, _, f in rows if start <= end <= until]
        quiet = dict(zip(baseline["ref_index"], baseline["final"]))
        last = max(end for _, end in ref if end is not None)
        after = [(end, f - quiet[i]) for (i, _), (end, _, f) in zip(pairs, rows)
                 if until < end < last - RECOVERY_TAIL_SECS and i in quiet]
        result["recovery"] = recovery(after, until)
    return result


def recovery(after, until):
    """Seconds from the load's end to the first word within RECOVERY_SLACK of the baseline
    after which every RECOVERY_WORDS words in a row are too, at the median; `after` holds
    (word end, final latency less the baseline's). None if that never came."""
    medians = [statistics.median(x for _, x in after[i:i + RECOVERY_WORDS])
               for i in range(len(after) - RECOVERY_WORDS + 1)]
    for i in range(len(medians)):
        if after[i][1] <= RECOVERY_SLACK and all(m <= RECOVERY_SLACK for m in medians[i:]):
            return max(0.0, after[i][0] - until)
    return None


def hog():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def stop_hogs(loads):
    for load in loads:
        load.kill()
        load.wait()
    loads.clear()


def secs_or_never(x):
    return "never" if x is None else f"{x:.1f} s"


async def bench(args):
    work = Path(tempfile.mkdtemp(prefix="earshot-bench-live-"))
    extra = args.server_arg or []
    results = {}
    try:
        for name in args.inputs.split(","):
            wav = build_input(name, work)
            with wave.open(str(wav)) as w:
                pcm = w.readframes(w.getnframes())
            secs = len(pcm) / 32000
            batch = batch_words(args.binary, args.models, wav)
            ref = batch
            if args.word_times == "dtw":
                ref = timed(batch, dtw_words(args.whisper_cli, args.models, wav, args.threads))
            data = work / f"data-{name}"
            port = free_port()
            proc = start_server(args.binary, args.models, data, port, args.threads, extra,
                                args.tuning)
            runs = []
            try:
                url = f"ws://127.0.0.1:{port}/"
                baseline = None
                if args.hog:
                    events, lags = await stream(url, pcm)
                    baseline = measure(ref, events)
                    baseline["lags"] = len(lags)
                    print(f"{name} (baseline, no load): {summary(baseline)}", file=sys.stderr)
                for _ in range(args.runs):
                    window = (args.hog_start, secs - args.hog_secs) if args.hog else None
                    loads, timers = [], []
                    if window:
                        loop = asyncio.get_running_loop()
                        timers.append(loop.call_later(window[0], lambda: loads.append(hog())))
                        timers.append(loop.call_later(window[1], lambda: stop_hogs(loads)))
                    try:
                        events, lags = await stream(url, pcm)
                    finally:
                        for t in timers:
                            t.cancel()
                        stop_hogs(loads)
                    m = measure(ref, events, window, baseline)
                    m["lags"] = len(lags)
                    if ref is not batch:
                        old = measure(batch, events)
                        m["batch_times"] = {k: old[k] for k in ("shown", "final", "ends")}
                    runs.append(m)
                    print(f"{name}: {summary(m)}", file=sys.stderr)
            finally:
                stop(proc)
            results[name] = {"secs": secs, "runs": runs, "baseline": baseline}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def summary(m):
    s = ""
    if "batch_times" in m:
        old = m["batch_times"]
        s = (f"[batch token times: shown p95 {percentile(old['shown'], 95):.2f}, final p50 "
             f"{percentile(old['final'], 50):.2f} p95 {percentile(old['final'], 95):.2f} s] ")
    s += (f"shown p50 {percentile(m['shown'], 50):.2f} p95 {percentile(m['shown'], 95):.2f} s, "
         f"final p50 {percentile(m['final'], 50):.2f} p95 {percentile(m['final'], 95):.2f} s, "
         f"WER {m['wer']:.3f} ({m['matched']}/{m['words']} matched), lag msgs {m['lags']}")
    if "recovery" in m:
        s += (f", final p95 before load {percentile(m['final_normal'], 95):.2f} s, "
              f"under load {percentile(m['final_loaded'], 95):.2f} s, "
              f"recovered {secs_or_never(m['recovery'])} after")
    return s


def table(results, hog):
    head = "| input | audio s | runs | shown p50 / p95 | final p50 / p95 | WER vs batch | stream_lag |"
    line = "|---|---:|---:|---|---|---:|---:|"
    if hog:
        head += " final p95 before load | under load (per run) | recovery (per run) |"
        line += "---:|---|---|"
    out = [head, line]
    for name, r in results.items():
        runs = r["runs"]
        pool = lambda key: [x for m in runs for x in m[key]]
        row = (f"| {name} | {r['secs']:.1f} | {len(runs)} | "
               f"{percentile(pool('shown'), 50):.2f} / {percentile(pool('shown'), 95):.2f} s | "
               f"{percentile(pool('final'), 50):.2f} / {percentile(pool('final'), 95):.2f} s | "
               f"{statistics.mean(m['wer'] for m in runs):.3f} | {sum(m['lags'] for m in runs)} |")
        if hog:
            row += (f" {percentile(pool('final_normal'), 95):.2f} s | "
                    f"{percentile(pool('final_loaded'), 95):.2f} s ("
                    + ", ".join(f"{percentile(m['final_loaded'], 95):.2f}" for m in runs) + ") | "
                    + ", ".join(secs_or_never(m['recovery']) for m in runs) + " |")
        out.append(row)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("models")
    ap.add_argument("--inputs", default="report,jfk146")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hog", action="store_true")
    ap.add_argument("--hog-start", type=float, default=15.0,
                    help="the hog starts this many seconds into the input")
    ap.add_argument("--hog-secs", type=float, default=25.0,
                    help="the hog stops this many seconds before the input ends")
    ap.add_argument("--server-arg", action="append", help="extra `earshot serve` argument")
    ap.add_argument("--tuning", help="live policy overrides for the server, e.g. "
                    "'min_step_secs=0.4,settle_secs=0.6' (EARSHOT_LIVE_TUNING, LiveConfig fields)")
    ap.add_argument("--word-times", choices=["dtw", "batch"], default="dtw",
                    help="where word end times come from: whisper-cli's DTW alignment (default) "
                    "or the batch transcript's token times (before 2026-12-04 23:30 UTC)")
    ap.add_argument("--whisper-cli", help="whisper-cli 1.9.3 for --word-times dtw (default: "
                    "built once into $BENCH_SCRATCH/peer-bin, /tmp/earshot-bench-live)")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if args.word_times == "dtw" and not args.whisper_cli:
        scratch = Path(os.environ.get("BENCH_SCRATCH", "/tmp/earshot-bench-live"))
        args.whisper_cli = whisper_cli(scratch / "peer-bin")
    results = asyncio.run(bench(args))
    print(table(results, args.hog))
    if args.json:
        Path(args.json).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
