#!/usr/bin/env python3
"""Server benchmarks for docs/BENCHMARKS.md: upload throughput against the founding document's own
server, live-stream latency, live streams per machine, idle memory per connection.

Run through scripts/bench-server.sh (builds the release binary, installs `websockets`). Everything
runs on 127.0.0.1 with bounded loops; each server is started and stopped here.
Usage: bench_server.py EARSHOT_BIN MODELS_DIR OUT_MD [--upload-mb 200] [--upload-runs 5] [--runs 5]
                      [--max-streams 8] [--only upload|live|idle]
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
JFK = CORPUS / "en_jfk.wav"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


class Sampler:
    """Samples a process's RSS every 10 ms while active (or until `done()` says the measured
    phase is over); reports the peak."""

    def __init__(self, pid, done=None):
        self.pid, self.peak, self.task, self.done = pid, 0, None, done

    async def _run(self):
        while not (self.done and self.done()):
            self.peak = max(self.peak, rss_kb(self.pid))
            await asyncio.sleep(0.01)

    def __enter__(self):
        self.base = rss_kb(self.pid)
        self.peak = self.base
        self.task = asyncio.get_event_loop().create_task(self._run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()

    @property
    def growth_mb(self):
        return (self.peak - self.base) / 1024


def start_earshot(binary, models_dir, data_dir, port, extra=()):
    env = dict(os.environ, EARSHOT_MODEL_MIRROR=str(models_dir))
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
            "--models-dir", str(data_dir / "models"), "--log", "warn", *extra]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def wait_port(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"server on port {port} did not start")


def stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def recv_json(ws):
    while True:
        msg = await ws.recv()
        if isinstance(msg, str):
            return json.loads(msg)


# ---------------------------------------------------------------------------------------------
# Uploads

def make_upload_file(path, megabytes):
    """A WAV: JFK's speech, then digital silence up to the size (the VAD skips silence, so the
    transcription after the upload is quick and the upload itself is what is measured)."""
    with wave.open(str(JFK)) as w:
        speech = w.readframes(w.getnframes())
    total = megabytes * 1024 * 1024
    frames = (total - 44) // 2
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(speech)
        block = b"\0" * (1 << 20)
        left = frames * 2 - len(speech)
        while left > 0:
            out.writeframes(block[: min(left, len(block))])
            left -= len(block)


def md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def seed_client_upload(url, path, chunk_size):
    """The founding document's client: JSON + base64 chunks, md5, one ack per chunk."""
    size = path.stat().st_size
    total = (size + chunk_size - 1) // chunk_size
    async with websockets.connect(url, ping_interval=60, ping_timeout=120, max_size=10 * 1024 * 1024,
                                  compression=None) as ws:
        first = await recv_json(ws)
        assert first["type"] == "connected", first
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "upload_request", "data": {
            "file_name": path.name, "file_size": size, "file_hash": md5_file(path),
            "chunk_size": chunk_size, "total_chunks": total, "upload_mode": "chunked"}}))
        ready = await recv_json(ws)
        assert ready["type"] == "upload_ready", ready
        task_id = ready["data"]["task_id"]
        with open(path, "rb") as f:
            for i in range(total):
                data = f.read(chunk_size)
                await ws.send(json.dumps({"type": "upload_chunk", "data": {
                    "task_id": task_id, "chunk_index": i, "chunk_size": len(data),
                    "chunk_hash": hashlib.md5(data).hexdigest(),
                    "chunk_data": base64.b64encode(data).decode(), "is_last": i == total - 1}}))
                ack = await recv_json(ws)
                assert ack["type"] == "chunk_received", ack
        while True:
            msg = await recv_json(ws)
            if msg["type"] == "upload_complete":
                return time.perf_counter() - start
            if msg["type"] == "error":
                raise RuntimeError(msg)


def cli_upload(binary, url, path, protocol, chunk_size):
    out = subprocess.run([binary, "upload", url, str(path), "--protocol", protocol, "--json",
                          "--chunk-size", str(chunk_size)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"earshot upload failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)["upload_seconds"]


async def baseline_upload(work, src, chunk):
    """One upload to the seed document's server with its own client design."""
    port = free_port()
    (work / "seed").mkdir()
    seed = subprocess.Popen([sys.executable, str(SHARED / "baselines" / "seed_server.py"), str(port),
                             str(work / "seed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, seed)
        with Sampler(seed.pid) as s:
            secs = await seed_client_upload(f"ws://127.0.0.1:{port}", src, chunk)
        return secs, s.growth_mb
    finally:
        stop(seed)
        shutil.rmtree(work / "seed")


async def earshot_upload(args, work, src, chunk, protocol):
    """One upload to a fresh Earshot server; `protocol` None means the Python seed client."""
    data = work / f"data-{protocol}"
    port = free_port()
    proc = start_earshot(args.binary, args.models, data, port)
    url = f"ws://127.0.0.1:{port}/"
    try:
        # The upload ends when the verified file is renamed to audio.*; transcription follows.
        uploaded = lambda: any((data / "uploads").glob("*/audio*"))
        with Sampler(proc.pid, uploaded) as s:
            if protocol is None:
                secs = await seed_client_upload(url, src, chunk)
            else:
                secs = await asyncio.to_thread(cli_upload, args.binary, url, src, protocol, chunk)
        return secs, s.growth_mb
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)


async def bench_uploads(args, md):
    chunk = 1 << 20
    work = Path(tempfile.mkdtemp(prefix="earshot-bench-"))
    python_seed = "seed client (Python, JSON+base64, stop-and-wait)"
    configs = [
        ("seed_server.py (baseline)", python_seed, "baseline"),
        ("Earshot", python_seed, None),
        ("Earshot", "`earshot upload --protocol seed`", "seed"),
        ("Earshot", "`earshot upload` (binary frames, pipelined acks)", "binary"),
    ]
    try:
        src = work / "upload.wav"
        make_upload_file(src, args.upload_mb)
        mb = src.stat().st_size / 1e6
        results = {i: [] for i in range(len(configs))}
        # Rounds interleave the configurations so drift in the machine hits them alike.
        for _ in range(args.upload_runs):
            for i, (_, _, protocol) in enumerate(configs):
                if protocol == "baseline":
                    results[i].append(await baseline_upload(work, src, chunk))
                else:
                    results[i].append(await earshot_upload(args, work, src, chunk, protocol))
        median = {i: statistics.median(secs for secs, _ in r) for i, r in results.items()}
        base = mb / median[0]
        md.append(f"File: {mb:.0f} MB WAV, 1 MiB chunks, loopback, client and server on the same 2 cores; "
                  f"median of {args.upload_runs} rounds (the configurations take turns within a round). "
                  "Seconds run from the client's start (hashing included: the Python client hashes the "
                  "file first, `earshot upload --protocol seed` too, the binary path hashes while it "
                  "sends) to `upload_complete`. Server RSS growth is the largest peak while the file is "
                  "received and verified (until it is renamed to `audio.*`) over the RSS just before.\n")
        md.append("| server | client | seconds (median) | min–max | MB/s | × baseline | server RSS growth |")
        md.append("|---|---|---:|---:|---:|---:|---:|")
        for i, (server, client, _) in enumerate(configs):
            secs = [x for x, _ in results[i]]
            growth = max(g for _, g in results[i])
            rate = mb / median[i]
            md.append(f"| {server} | {client} | {median[i]:.2f} | {min(secs):.2f}–{max(secs):.2f} | "
                      f"{rate:.1f} | {rate / base:.2f} | {growth:.1f} MB |")
        md.append("")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Live streams

def norm_words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def word_ends(binary, models):
    """End time of every word of JFK, from `earshot transcribe --format verbose_json`."""
    env = dict(os.environ, EARSHOT_MODEL_MIRROR=str(models))
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([binary, "transcribe", str(JFK), "--format", "verbose_json",
                              "--models-dir", d, "--log", "warn"],
                             capture_output=True, text=True, env=env, check=True)
    doc = json.loads(out.stdout)
    ends = []
    for w in doc.get("words", []):
        for _ in norm_words(w["word"]):
            ends.append(w["end"])
    return ends


async def live_stream(url, pcm, realtime=True, frame_ms=50):
    """Streams s16le 16 kHz PCM; returns (t0, partials[(t, text)], segments[(t, end, text)], done_at, end_sent_at)."""
    frame = 16000 * 2 * frame_ms // 1000
    async with websockets.connect(url, max_size=10 * 1024 * 1024) as ws:
        await recv_json(ws)
        await ws.send(json.dumps({"type": "stream_start",
                                  "data": {"format": "pcm_s16le", "sample_rate": 16000, "channels": 1}}))
        started = await recv_json(ws)
        assert started["type"] == "stream_started", started
        partials, segments, lags, events = [], [], [], []
        t0 = time.perf_counter()
        done = asyncio.get_event_loop().create_future()

        async def reader():
            while True:
                msg = await recv_json(ws)
                now = time.perf_counter() - t0
                kind, data = msg["type"], msg["data"]
                if kind == "transcript_partial":
                    partials.append((now, data["text"]))
                    events.append(("partial", now, data["text"]))
                elif kind == "transcript_segment":
                    segments.append((now, data["end"], data["text"]))
                    events.append(("final", now, data["text"]))
                elif kind == "stream_lag":
                    lags.append(data["behind_seconds"])
                elif kind == "transcription_complete":
                    done.set_result(now)
                    return

        task = asyncio.get_event_loop().create_task(reader())
        for i in range(0, len(pcm), frame):
            if realtime:
                due = t0 + i / 32000
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send(b"\x02" + pcm[i:i + frame])
        end_sent = time.perf_counter() - t0
        await ws.send(json.dumps({"type": "stream_end", "data": {}}))
        done_at = await asyncio.wait_for(done, 300)
        await task
        return events, segments, lags, done_at, end_sent


def word_times(events, count):
    """When each of the first `count` words was first shown (in a partial or a final segment)
    and when it became final. A partial holds only the unstable tail after the committed
    segments, so word i of the speech is word i - committed of the partial."""
    shown, final = [None] * count, [None] * count
    committed = 0
    for kind, t, text in events:
        n = len(norm_words(text))
        for i in range(committed, min(count, committed + n)):
            if shown[i] is None:
                shown[i] = t
            if kind == "final" and final[i] is None:
                final[i] = t
        if kind == "final":
            committed += n
    return shown, final


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def bench_live(args, md):
    with wave.open(str(JFK)) as w:
        pcm = w.readframes(w.getnframes())
    ends = word_ends(args.binary, args.models)
    work = Path(tempfile.mkdtemp(prefix="earshot-live-"))
    port = free_port()
    proc = start_earshot(args.binary, args.models, work, port)
    url = f"ws://127.0.0.1:{port}/"
    partial_lat, final_lat = [], []
    try:
        await live_stream(url, pcm, realtime=False)  # warm-up
        for _ in range(args.runs):
            events, _, _, _, _ = await live_stream(url, pcm)
            shown, final = word_times(events, len(ends))
            partial_lat += [t - e for t, e in zip(shown, ends) if t is not None]
            final_lat += [t - e for t, e in zip(final, ends) if t is not None]
        md.append(f"`en_jfk.wav` streamed at real time in 50 ms PCM frames, {args.runs} runs, tiny.en, "
                  "1 worker × 2 threads. For each word, from the moment it ends in the audio (word times "
                  "from `earshot transcribe --format verbose_json`) to the first message that shows it "
                  "(a `transcript_partial`, or a `transcript_segment` if it was committed first), and to "
                  "the `transcript_segment` that makes it final.\n")
        md.append("| measure | p50 | p95 | goal |")
        md.append("|---|---:|---:|---|")
        md.append(f"| word end → shown (partial) | {percentile(partial_lat, 50):.2f} s | {percentile(partial_lat, 95):.2f} s | ≤ 1.0 s |")
        md.append(f"| word end → final segment | {percentile(final_lat, 50):.2f} s | {percentile(final_lat, 95):.2f} s | ≤ 2.0 s |")
        md.append("")
        await bench_capacity(args, md, url, pcm)
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


async def bench_capacity(args, md, url, pcm):
    md.append("Concurrent live streams of `en_jfk.wav` at real time on the same server. A stream keeps "
              "up when its result arrives within 2 s of `stream_end` and it was never told it lags "
              "more than 2 s.\n")
    md.append("| streams | worst delay after stream_end | worst lag reported | all keep up |")
    md.append("|---:|---:|---:|---|")
    best = 0
    for n in range(1, args.max_streams + 1):
        results = await asyncio.gather(*[live_stream(url, pcm) for _ in range(n)])
        delay = max(done - end for _, _, _, done, end in results)
        lag = max((max(lags) if lags else 0.0) for _, _, lags, _, _ in results)
        ok = delay <= 2.0 and lag <= 2.0
        best = n if ok and best == n - 1 else best
        md.append(f"| {n} | {delay:.2f} s | {lag:.1f} s | {'yes' if ok else 'no'} |")
    md.append(f"\nStreams kept at real time: **{best}**.\n")


async def bench_idle(args, md, count=1000):
    work = Path(tempfile.mkdtemp(prefix="earshot-idle-"))
    port = free_port()
    proc = start_earshot(args.binary, args.models, work, port)
    try:
        await asyncio.sleep(1)
        before = rss_kb(proc.pid)
        conns = []
        for _ in range(count):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
            await recv_json(ws)
            conns.append(ws)
        await asyncio.sleep(2)
        after = rss_kb(proc.pid)
        alive = sum(1 for ws in conns if ws.state.name == "OPEN")
        for ws in conns:
            await ws.close()
        per = (after - before) / count
        md.append(f"{count} idle WebSocket connections held open (each received `connected`): "
                  f"server RSS {before / 1024:.1f} MB → {after / 1024:.1f} MB, "
                  f"**{per:.1f} KB per connection** (goal ≤ 64 KB); {alive}/{count} still open after 2 s.\n")
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("binary")
    ap.add_argument("models")
    ap.add_argument("out")
    ap.add_argument("--upload-mb", type=int, default=200)
    ap.add_argument("--upload-runs", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-streams", type=int, default=8)
    ap.add_argument("--only", choices=["upload", "live", "idle"])
    args = ap.parse_args()
    md = []
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    md.append("## Server\n")
    md.append(f"Machine: {cpu}, {os.cpu_count()} cores. Date: {time.strftime('%Y-%m-%d')}. "
              f"Release build. Run: `scripts/bench-server.sh`.\n")
    if args.only in (None, "upload"):
        md.append("### Upload throughput\n")
        await bench_uploads(args, md)
    if args.only in (None, "live"):
        md.append("### Live latency and capacity\n")
        await bench_live(args, md)
    if args.only in (None, "idle"):
        md.append("### Idle connections\n")
        await bench_idle(args, md)
    Path(args.out).write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    asyncio.run(main())
