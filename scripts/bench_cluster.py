#!/usr/bin/env python3
"""Cluster benchmark for docs/BENCHMARKS.md ("## Cluster"): a node on NATS JetStream against an
embedded node on the same work, in the same run, the two modes taking turns in every round.

- upload: a >= 100 MB WAV of corpus speech (concatenated, made in a temp dir) through the binary
  fast path (`earshot upload`), seconds between the node's own `upload started` and
  `upload complete` log lines; also in a third mode, the cluster with `--cluster-upload-store`
  (upload bytes in a shared directory, not in NATS);
- jobs: N short corpus files posted over HTTP (`/v1/audio/transcriptions`) by three clients in turn, jobs per
  minute from the first post to the last answer;
- pick-up: one job at a time, from the node's `queued a job` log line to its `running a job`
  line (same process, same clock);
- failover (cluster only): a front node without processing slots, two worker nodes; the worker
  running a long job is killed with SIGKILL; seconds from the kill to the other worker's
  `running a job from the cluster` line for that task.

Every process (nats-server, nodes) is started here on free ports with temp stores, and stopped.
Run through scripts/bench-cluster. Usage: bench_cluster.py EARSHOT_BIN MODELS_DIR OUT_MD
  [--runs 3] [--upload-mb 100] [--jobs 9] [--pickups 8] [--failovers 2] [--only NAME]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import wave
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
JOB_FILES = ["en_jfk.wav", "en_arctic_a0024.wav", "en_harvard_birch_canoe.wav"]
LONG_FILE = "en_JFK_inaugural_146s.ogg"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"a process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every 5 s while the benchmark runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stopped = [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stopped.wait(5)

    def summary(self):
        s = self.samples or [os.getloadavg()[0]]
        return f"{min(s):.1f} / {statistics.median(s):.1f} / {max(s):.1f}"


class Nats:
    def __init__(self, work):
        self.port, self.store = free_port(), work / f"nats-{uuid.uuid4().hex[:6]}"
        self.proc = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.store, ignore_errors=True)


class Node:
    """`earshot serve` with JSON logs in a file, ready when /readyz says so."""

    def __init__(self, args, work, name, extra=()):
        self.dir = work / f"{name}-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir()
        self.port = free_port()
        self.log = self.dir / "log.jsonl"
        env = dict(os.environ, EARSHOT_MODEL_MIRROR=str(args.models))
        cmd = [args.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
               str(self.dir / "data"), "--models-dir", str(args.work_models), "--log",
               "info,whisper_rs=warn", "--log-format", "json",
               # every request comes from 127.0.0.1: no per-address cap on the concurrent posts
               "--max-uploads-per-client", "0", *extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        wait_port(self.port, self.proc)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.http}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"node {name} never became ready")

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self):
        return f"ws://127.0.0.1:{self.port}/"

    def lines(self):
        """The node's log lines so far: (unix seconds, message, task_id)."""
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            fields = line.get("fields", {})
            stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append((stamp, fields.get("message", ""), str(fields.get("task_id", ""))))
        return out

    def first(self, message, task=None):
        for stamp, msg, task_id in self.lines():
            if msg == message and (task is None or task_id == task):
                return stamp, task_id
        return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Setup:
    """One mode's processes: embedded (one node), cluster (nats-server + node(s)) or shared
    (the cluster with upload bytes in a directory, `--cluster-upload-store`, instead of NATS)."""

    def __init__(self, args, work, mode, nodes=(("n", ()),)):
        self.nats = Nats(work) if mode in ("cluster", "shared") else None
        flags = ["--cluster", self.nats.url] if self.nats else []
        self.store = work / f"store-{uuid.uuid4().hex[:6]}" if mode == "shared" else None
        if self.store:
            flags += ["--cluster-upload-store", f"file://{self.store}"]
        self.nodes = [Node(args, work, name, [*flags, *extra]) for name, extra in nodes]

    def stop(self):
        for n in self.nodes:
            n.kill()
            shutil.rmtree(n.dir, ignore_errors=True)
        if self.nats:
            self.nats.stop()
        if self.store:
            shutil.rmtree(self.store, ignore_errors=True)


def make_upload_file(path, megabytes):
    """Corpus speech (every WAV but the noise files, as 16 kHz mono PCM) repeated to the size."""
    pcm = b"".join(
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(f), "-ac", "1", "-ar", "16000",
                        "-f", "s16le", "-"], capture_output=True, check=True).stdout
        for f in sorted(CORPUS.glob("*.wav")) if not f.name.startswith("noise"))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        written = 0
        while written < megabytes * 1_000_000:
            out.writeframes(pcm)
            written += len(pcm)


def cpu_seconds(procs):
    """User + system CPU seconds the processes have used so far."""
    ticks = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def upload_once(args, work, mode, src):
    """Seconds the node took from `upload started` to `upload complete` (binary fast path), and
    the CPU seconds the server side (node, and nats-server in the cluster) used meanwhile."""
    setup = Setup(args, work, mode)
    node = setup.nodes[0]
    servers = [node.proc] + ([setup.nats.proc] if setup.nats else [])
    # The last run's files still being written back to disk would slow this one down.
    os.sync()
    time.sleep(1)
    cpu0 = cpu_seconds(servers)
    client = subprocess.Popen([args.binary, "upload", node.ws, str(src), "--json", "--log", "warn"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            done = node.first("upload complete")
            if done:
                cpu = cpu_seconds(servers) - cpu0
                return done[0] - node.first("upload started")[0], cpu
            if client.poll() is not None:
                sys.exit(f"earshot upload exited with {client.returncode} before upload_complete")
            time.sleep(0.005)
        sys.exit("the upload did not complete in 10 minutes")
    finally:
        client.kill()
        client.wait()
        setup.stop()


def post(url, path):
    """One transcription over HTTP (curl, multipart); the task id."""
    out = subprocess.run(["curl", "-sS", "-f", "-D", "-", "-o", "/dev/null", "-F", "model=whisper-1",
                          "-F", f"file=@{path}", f"{url}/v1/audio/transcriptions"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"transcription failed: {out.stderr.strip()}")
    for line in out.stdout.splitlines():
        if line.lower().startswith("x-earshot-task-id:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("no task id header")


def jobs_once(args, work, mode):
    """Jobs per minute: `--jobs` short files posted at once, to the last answer."""
    setup = Setup(args, work, mode)
    node = setup.nodes[0]
    files = [CORPUS / JOB_FILES[i % len(JOB_FILES)] for i in range(args.jobs)]
    errors = []

    def lane(paths):
        try:
            for path in paths:
                post(node.http, path)
        except Exception as e:  # reported below
            errors.append(e)

    try:
        # Three clients posting in turn (as many as the node's default processing slots), so
        # the node is never idle and never refuses.
        threads = [threading.Thread(target=lane, args=(files[i::3],)) for i in range(3)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - start
        if errors:
            sys.exit(f"{mode}: {errors[0]}")
        return args.jobs / secs * 60
    finally:
        setup.stop()


def pickups_once(args, work, mode):
    """Seconds from `queued a job` to `running a job` for jobs posted one at a time."""
    setup = Setup(args, work, mode)
    node = setup.nodes[0]
    start_msg = "running a job from the cluster" if mode == "cluster" else "running a job"
    queued_msg = "queued a job in the cluster" if mode == "cluster" else "queued a job"
    try:
        waits = []
        for i in range(args.pickups):
            task = post(node.http, CORPUS / JOB_FILES[i % len(JOB_FILES)])
            queued, started = node.first(queued_msg, task), node.first(start_msg, task)
            waits.append(started[0] - queued[0])
        return waits
    finally:
        setup.stop()


def failover_once(args, work):
    """Seconds from SIGKILL of the worker running a job to the other worker running it."""
    setup = Setup(args, work, "cluster", nodes=(
        # every node gets the same ack wait: the job queue is the cluster's, created by
        # whichever node starts first (docs/CLUSTER.md)
        ("front", ("--max-processing", "0", "--cluster-ack-wait", args.ack_wait)),
        ("w1", ("--max-processing", "1", "--cluster-ack-wait", args.ack_wait)),
        ("w2", ("--max-processing", "1", "--cluster-ack-wait", args.ack_wait)),
    ))
    front, workers = setup.nodes[0], setup.nodes[1:]
    msg = "running a job from the cluster"
    result = {}
    poster = threading.Thread(target=lambda: result.update(task=post(front.http, CORPUS / LONG_FILE)))
    try:
        poster.start()
        deadline = time.time() + 120
        runner = None
        while runner is None and time.time() < deadline:
            runner = next((w for w in workers if w.first(msg)), None)
            time.sleep(0.05)
        if runner is None:
            sys.exit("no worker ran the job")
        task = runner.first(msg)[1]
        time.sleep(2)  # mid-job
        killed = time.time()
        runner.kill()
        other = next(w for w in workers if w is not runner)
        while time.time() < killed + 300:
            again = other.first(msg, task)
            if again:
                poster.join(timeout=600)
                if result.get("task") != task:
                    sys.exit("the job did not complete after the failover")
                return again[0] - killed
            time.sleep(0.05)
        sys.exit("the job never ran again")
    finally:
        setup.stop()


def median(xs):
    return statistics.median(xs)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("models", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--upload-mb", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=9)
    ap.add_argument("--pickups", type=int, default=8)
    ap.add_argument("--failovers", type=int, default=2)
    ap.add_argument("--ack-wait", default="30s")
    ap.add_argument("--only", choices=["upload", "jobs", "pickup", "failover"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="earshot-bench-cluster-"))
    # Uploads are measured twice: on disk, and in memory (tmpfs), where no disk sets the pace
    # and what is left is the software path's own cost.
    memory = Path(tempfile.mkdtemp(prefix="earshot-bench-cluster-", dir="/dev/shm"))
    args.work_models = work / "models"
    load = LoadSampler()
    load.start()
    began = time.time()
    want = lambda name: args.only in (None, name)
    modes = lambda: {"embedded": [], "cluster": [], "shared": []}
    up, jobs, picks, up_mem, cpu_mem = modes(), modes(), modes(), modes(), modes()
    try:
        src = work / "speech.wav"
        if want("upload"):
            make_upload_file(src, args.upload_mb)
        mb = src.stat().st_size / 1e6 if src.exists() else 0
        # Rounds interleave the modes, and swap which goes first, so drift hits both alike.
        for r in range(args.runs):
            order = ["embedded", "cluster", "shared"]
            order = order if r % 2 == 0 else order[::-1]
            for mode in order:
                if want("upload"):
                    up[mode].append(mb / upload_once(args, work, mode, src)[0])
                    secs, cpu = upload_once(args, memory, mode, src)
                    up_mem[mode].append(mb / secs)
                    cpu_mem[mode].append(cpu / mb * 100)
                # Jobs never touch upload bytes: the shared store changes nothing for them.
                if want("jobs") and mode != "shared":
                    jobs[mode].append(jobs_once(args, work, mode))
                if want("pickup") and mode != "shared":
                    picks[mode].extend(pickups_once(args, work, mode))
                print(f"round {r + 1} {mode}: upload {up[mode][-1:]} MB/s, in memory {up_mem[mode][-1:]}, "
                      f"jobs/min {jobs[mode][-1:]}",
                      file=sys.stderr)
        fails = [failover_once(args, work) for _ in range(args.failovers)] if want("failover") else []
    finally:
        load.stopped.set()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(memory, ignore_errors=True)
    minutes = (time.time() - began) / 60
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               "unknown CPU")
    md = ["## Cluster", "",
          f"Machine: {cpu}, {os.cpu_count()} cores, shared with other work (1-minute load average during "
          f"the run, min / median / max: {load.summary()}). Date: {time.strftime('%Y-%m-%d')}. "
          f"Release build, tiny.en, nats-server {nats_version()} (file store, one server, R1) on loopback. "
          f"Run: `nice -n 19 scripts/bench-cluster {' '.join(sys.argv[4:])}`".rstrip() + f" ({minutes:.0f} min).",
          "",
          f"Each round runs the modes on the same work, taking turns (the order reverses every round); "
          f"{args.runs} rounds, medians. *Embedded* is one node on its data directory; *cluster* is one "
          "node with `--cluster` on its own nats-server, so every chunk, job, event and result goes "
          "through JetStream. Each measurement starts fresh processes.", ""]
    rows = []
    if up["cluster"]:
        for mode, where in (("cluster", "bytes in NATS"), ("shared", "bytes in a shared directory")):
            e, c = median(up["embedded"]), median(up[mode])
            rows.append((f"binary-path upload, MB/s, on disk; cluster: {where}", f"{e:.0f}", f"{c:.0f}",
                         f"{c / e:.2f}×", "≥ 0.8×"))
            e, c = median(up_mem["embedded"]), median(up_mem[mode])
            rows.append((f"binary-path upload, MB/s, in memory (tmpfs); cluster: {where}", f"{e:.0f}",
                         f"{c:.0f}", f"{c / e:.2f}×", "≥ 0.8×"))
            e, c = median(cpu_mem["embedded"]), median(cpu_mem[mode])
            rows.append((f"server CPU seconds per 100 MB uploaded, in memory; cluster: {where}", f"{e:.2f}",
                         f"{c:.2f}", f"{c / e:.2f}×", ""))
    if jobs["cluster"]:
        e, c = median(jobs["embedded"]), median(jobs["cluster"])
        rows.append(("transcription jobs per minute", f"{e:.1f}", f"{c:.1f}", f"{c / e:.2f}×", "≥ 0.98×"))
    if picks["cluster"]:
        for p in (50, 95):
            e, c = pct(picks["embedded"], p), pct(picks["cluster"], p)
            rows.append((f"job pick-up, enqueue → start, p{p}", f"{e * 1000:.1f} ms", f"{c * 1000:.0f} ms",
                         "", ""))
    if rows:
        md += ["| measure | embedded | cluster | cluster / embedded | goal |", "|---|---:|---:|---:|---|"]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md.append("")
        if up["cluster"]:
            md.append(f"- Upload: a {mb:.0f} MB WAV of corpus speech (the corpus WAVs, noise files left out, "
                      "as 16 kHz mono, repeated), sent by `earshot upload` (binary frames, 1 MiB chunks, "
                      "pipelined acks); seconds from the node's `upload started` log line to its "
                      "`upload complete` line (the file stored and verified; with bytes in NATS the node's "
                      "local copy renamed into place, with a shared directory nothing kept on the node: "
                      "the job's node assembles the file from the shared chunks); every run starts after `sync` and a second's rest, so no earlier "
                      "run's writeback falls into it. Runs on disk (MB/s): embedded "
                      f"{', '.join(f'{x:.0f}' for x in up['embedded'])}; cluster, bytes in NATS "
                      f"{', '.join(f'{x:.0f}' for x in up['cluster'])}; cluster, bytes in a shared "
                      f"directory {', '.join(f'{x:.0f}' for x in up['shared'])}. In memory: data "
                      "directory, nats-server store and shared directory on /dev/shm; embedded "
                      f"{', '.join(f'{x:.0f}' for x in up_mem['embedded'])}; bytes in NATS "
                      f"{', '.join(f'{x:.0f}' for x in up_mem['cluster'])}; in a shared directory "
                      f"{', '.join(f'{x:.0f}' for x in up_mem['shared'])}. *Bytes in a shared "
                      "directory* is the cluster node with `--cluster-upload-store file://DIR` (one "
                      "fsynced file per chunk; NATS holds the records and leases). Server CPU: user + "
                      "system time of the node (and nats-server) from the client's start to "
                      "`upload complete`.")
        if jobs["cluster"]:
            md.append(f"- Jobs: {args.jobs} short corpus files ({', '.join(JOB_FILES)} in turn) posted "
                      "to `/v1/audio/transcriptions` (curl) by three clients, each posting its next file "
                      "when the last is answered (default processing slots: 3); from the first post to "
                      "the last answer. Runs (jobs/min): embedded "
                      f"{', '.join(f'{x:.1f}' for x in jobs['embedded'])}; cluster "
                      f"{', '.join(f'{x:.1f}' for x in jobs['cluster'])}.")
        if picks["cluster"]:
            md.append(f"- Pick-up: {args.pickups} jobs per round posted one after another to an idle node "
                      f"({len(picks['cluster'])} per mode); times from the node's own JSON log: "
                      "`queued a job` → `running a job` (embedded) and `queued a job in the cluster` → "
                      "`running a job from the cluster` (cluster: the audio stored in the object store, "
                      "the job published, pulled, its audio fetched back).")
    if fails:
        md.append(f"- Failover: a front node without processing slots takes a {LONG_FILE} transcription "
                  f"over HTTP; two worker nodes (`--max-processing 1`), every node `--cluster-ack-wait {args.ack_wait}`; "
                  "2 s after the job starts on one, that worker gets SIGKILL. Time from the kill to the "
                  f"other worker's `running a job from the cluster` line: "
                  f"{', '.join(f'{x:.1f} s' for x in fails)} (median {median(fails):.1f} s); the HTTP "
                  "request on the front node got its transcript each time.")
    args.out.write_text("\n".join(md) + "\n")
    print("\n".join(md))


def nats_version():
    out = subprocess.run(["nats-server", "--version"], capture_output=True, text=True)
    return out.stdout.strip().split()[-1] if out.returncode == 0 else "?"


if __name__ == "__main__":
    main()
