// The Earshot page: live microphone transcription and resumable uploads over one WebSocket,
// speaking the protocol in docs/PROTOCOL.md. No framework, no build step.
//
// - Microphone: getUserMedia → AudioWorklet (worklet.js) → 16-bit PCM at the context's rate →
//   binary frames of kind 0x02 after `stream_start`; `stream_end` on stop.
// - Upload: MD5 of the file (file_hash), `upload_request` with transport "binary", chunks as
//   binary frames of kind 0x04 (CRC-32 checked) within the server's window; the task id and
//   file identity are kept in localStorage, so after a lost connection or a reload the page
//   sends `upload_resume` and only the missing chunks.

import { crc32, md5OfBlob } from "./hash.js";
import { render, MIME } from "./formats.js";

const params = new URLSearchParams(location.search);
/** Chunk size for uploads; `?chunk_size=` overrides it (tests use small chunks). */
const CHUNK_SIZE = positiveInt(params.get("chunk_size")) ?? 1 << 20;
/** Bytes the page lets queue in the WebSocket before it waits. */
const MAX_BUFFERED = 8 << 20;
const STORE_KEY = "earshot.upload";
const KIND_AUDIO = 0x02;
const KIND_CHUNK_CRC32 = 0x04;

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $("conn"), language: $("language"), languageHint: $("language-hint"),
  mic: $("mic"), micLabel: $("mic-label"), drop: $("drop"), file: $("file"),
  resume: $("resume"), resumeName: $("resume-name"), forget: $("forget"),
  upload: $("upload"), uploadName: $("upload-name"), pause: $("pause"),
  progress: $("upload-progress"), stats: $("upload-stats"),
  alert: $("alert"), lag: $("lag"),
  transcript: $("transcript"), empty: $("empty"), state: $("transcript-state"),
  downloads: document.querySelectorAll(".downloads button"),
};

/** Counters the browser tests read (window.earshotStats). */
const stats = { connections: 0, chunksSent: 0, resumes: 0, uploadsStarted: 0, missingAtResume: null, sentSinceResume: 0 };
window.earshotStats = stats;

function positiveInt(s) {
  const n = Number.parseInt(s ?? "", 10);
  return Number.isFinite(n) && n > 0 ? n : null;
}

// ---------------------------------------------------------------------------------------
// Connection: one WebSocket, reconnected with backoff
// ---------------------------------------------------------------------------------------

const conn = { ws: null, open: false, limits: null, model: "", retryMs: 500, generation: 0 };

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/");
  ws.binaryType = "arraybuffer";
  const generation = ++conn.generation;
  conn.ws = ws;
  setConn("Connecting…", "");
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    handle(msg.type, msg.data ?? {});
  };
  ws.onclose = () => {
    if (generation !== conn.generation) return;
    conn.open = false;
    setConn("Disconnected — reconnecting…", "bad");
    connectionLost();
    setTimeout(connect, conn.retryMs);
    conn.retryMs = Math.min(conn.retryMs * 2, 10000);
  };
}

function send(type, data) {
  if (conn.open) conn.ws.send(JSON.stringify({ type, data }));
}

function setConn(text, cls) {
  ui.conn.textContent = text;
  ui.conn.className = "pill " + cls;
}

function onConnected(d) {
  conn.open = true;
  conn.retryMs = 500;
  conn.limits = d.limits;
  conn.model = d.model ?? "";
  stats.connections++;
  setConn(`Connected · model ${conn.model}`, "ok");
  const englishOnly = conn.model.endsWith(".en");
  ui.languageHint.hidden = !englishOnly;
  if (englishOnly) ui.language.value = "en";
  ui.language.disabled = englishOnly;
  ui.mic.disabled = false;
  hideAlert();
  if (upload && upload.taskId && !upload.uploaded) {
    resumeUpload();
  } else if (upload && upload.taskId) {
    send("get_result", { task_id: upload.taskId }); // transcription may still be running
  } else if (!upload) {
    const saved = loadSaved();
    if (saved) {
      // Finished (or transcribing) while we were away? Then its segments stream in here.
      if (transcript.taskId !== saved.taskId) startTranscript(saved.taskId, saved.name);
      send("get_result", { task_id: saved.taskId });
    }
  }
}

function connectionLost() {
  ui.mic.disabled = true;
  if (live) {
    stopCapture();
    live = null;
    setMicButton(false);
    showAlert("The connection was lost, so the live stream ended. Start the microphone again when it is back.");
  }
  if (upload && !upload.uploaded) {
    upload.sending = false;
    upload.awaitingReady = false;
    showUploadStats(`Connection lost — ${Math.floor(ui.progress.value)}% is safe on the server; resuming automatically…`);
  }
}

// ---------------------------------------------------------------------------------------
// Server messages
// ---------------------------------------------------------------------------------------

function handle(type, d) {
  switch (type) {
    case "connected": return onConnected(d);
    case "upload_ready": return onUploadReady(d);
    case "chunk_ack": return onChunkAck(d);
    case "upload_complete": return onUploadComplete(d);
    case "transcription_progress": return onTranscriptionProgress(d);
    case "transcript_segment": return onSegment(d);
    case "transcript_partial": return onPartial(d);
    case "transcription_complete": return onComplete(d);
    case "stream_started": return onStreamStarted(d);
    case "stream_lag": return onLag(d);
    case "error": return onError(d);
    case "server_shutdown": return showAlert("The server is restarting; the page reconnects by itself.");
    default: return undefined;
  }
}

function onError(d) {
  const mine = (id) => id && (id === upload?.taskId || id === live?.taskId || id === loadSaved()?.taskId);
  if (d.code === "busy") {
    const wait = d.retry_after_ms ?? 2000;
    showAlert(`The server is busy (${d.message}). Retrying in ${Math.ceil(wait / 1000)} s…`);
    if (upload?.awaitingReady) {
      const u = upload;
      setTimeout(() => { if (upload === u && conn.open) (u.taskId ? resumeUpload() : requestUpload()); }, wait);
    } else if (live && !live.taskId) stopLive(false);
    return;
  }
  if (d.code === "chunk_hash_mismatch" && upload && d.task_id === upload.taskId) {
    upload.resend.push(d.chunk_index); // corrupted on the way: send it again
    upload.resend.sort((a, b) => a - b);
    return pump();
  }
  if (d.code === "session_not_found" && d.task_id) {
    const saved = loadSaved();
    if (upload && d.task_id === upload.taskId && !upload.uploaded) {
      // The server no longer knows this upload (expired): start it again from scratch.
      forgetSaved();
      upload.taskId = null;
      return requestUpload();
    }
    if (saved && d.task_id === saved.taskId && !upload) return; // still uploading: needs the file
    if (!mine(d.task_id)) return;
  }
  if (d.code === "not_ready") return;
  showAlert(d.message || d.code);
  if (live && !live.taskId) stopLive(false);
  if (upload && mine(d.task_id) && ["file_hash_mismatch", "too_large", "quota_exceeded", "unsupported_audio", "invalid_chunk", "internal"].includes(d.code)) {
    forgetSaved();
    upload.failed = true;
    showUploadStats("Upload failed: " + (d.message || d.code));
    ui.pause.disabled = true;
    setState("");
  }
}

// ---------------------------------------------------------------------------------------
// Transcript
// ---------------------------------------------------------------------------------------

/** The transcript on screen: one task's segments, plus a live partial tail. */
let transcript = newTranscript(null, "transcript");

function newTranscript(taskId, name) {
  return { taskId, name, segments: [], partial: "", revision: -1, language: null, duration: null, done: false };
}

function startTranscript(taskId, name) {
  transcript = newTranscript(taskId, name);
  ui.transcript.replaceChildren();
  drawTranscript();
}

function onSegment(d) {
  if (d.task_id !== transcript.taskId) return;
  transcript.segments[d.index] = { start: d.start, end: d.end, text: d.text };
  if (live) transcript.partial = "";
  drawTranscript();
}

function onPartial(d) {
  if (d.task_id !== transcript.taskId || d.revision <= transcript.revision) return;
  transcript.revision = d.revision;
  transcript.partial = d.text;
  drawTranscript();
}

function onComplete(d) {
  const saved = loadSaved();
  if (saved && d.task_id === saved.taskId) forgetSaved();
  if (!upload && saved && d.task_id === saved.taskId && transcript.taskId !== d.task_id) {
    startTranscript(d.task_id, saved.name); // finished while the page was away: show it
  }
  if (d.task_id !== transcript.taskId) return;
  transcript.segments = d.segments.map((s) => ({ start: s.start, end: s.end, text: s.text }));
  transcript.partial = "";
  transcript.language = d.language;
  transcript.duration = d.duration;
  transcript.done = true;
  drawTranscript();
  ui.lag.hidden = true;
  setState(`Done · ${d.language} · ${formatDuration(d.duration)} of audio`);
  if (upload && d.task_id === upload.taskId) {
    ui.progress.value = 100;
    showUploadStats("Transcribed.");
    ui.pause.hidden = true;
    upload = null;
  }
  if (live && d.task_id === live.taskId) {
    live = null;
    ui.mic.disabled = !conn.open;
  }
}

/**
 * Updates the list in place: finished segments are only ever added or corrected, so a
 * screen reader announces each once; the changing partial is hidden from it.
 */
function drawTranscript() {
  const finals = [...ui.transcript.querySelectorAll("li:not(.partial)")];
  let partial = ui.transcript.querySelector("li.partial");
  let at = 0;
  transcript.segments.forEach((s, index) => {
    if (!s || !s.text.trim()) return;
    const key = `${index}|${s.start}|${s.text}`;
    if (finals[at]?.dataset.key !== key) {
      const li = line(clock(s.start), s.text.trim(), `PT${s.start.toFixed(2)}S`);
      li.dataset.key = key;
      if (finals[at]) finals[at].replaceWith(li);
      else ui.transcript.insertBefore(li, partial);
    }
    at++;
  });
  finals.slice(at).forEach((li) => li.remove());
  const tail = transcript.partial.trim();
  if (!tail) partial?.remove();
  else if (partial) partial.lastChild.textContent = tail;
  else {
    partial = line("…", tail);
    partial.className = "partial";
    partial.setAttribute("aria-hidden", "true");
    ui.transcript.append(partial);
  }
  ui.empty.hidden = at > 0 || Boolean(tail);
  ui.downloads.forEach((b) => { b.disabled = at === 0; });
}

function line(when, text, datetime) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = when;
  if (datetime) time.dateTime = datetime;
  const span = document.createElement("span");
  span.textContent = text;
  li.append(time, span);
  return li;
}

function download(format) {
  const segments = transcript.segments.filter(Boolean);
  const body = render({ segments, language: transcript.language, duration: transcript.duration }, format);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([body], { type: MIME[format] }));
  a.download = `${transcript.name.replace(/\.[^.]*$/, "")}.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ---------------------------------------------------------------------------------------
// Live microphone
// ---------------------------------------------------------------------------------------

/** The open live stream, or null. */
let live = null;
let lagTimer = 0;

async function startLive() {
  if (!conn.open) return showAlert("Not connected to the server yet.");
  hideAlert();
  const session = { taskId: null, pending: [], ctx: null, media: null, node: null, stopping: false, ending: false };
  live = session;
  setMicButton(true);
  try {
    session.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    session.ctx = new AudioContext();
    await session.ctx.audioWorklet.addModule("worklet.js");
    const source = session.ctx.createMediaStreamSource(session.media);
    session.node = new AudioWorkletNode(session.ctx, "pcm-capture");
    const mute = session.ctx.createGain();
    mute.gain.value = 0; // keeps the graph pulling without playing the microphone back
    source.connect(session.node).connect(mute).connect(session.ctx.destination);
    session.node.port.onmessage = (e) => onPcm(session, e.data);
  } catch (err) {
    stopCapture(session);
    if (live === session) live = null;
    setMicButton(false);
    return showAlert(`The microphone could not be opened: ${err.message || err.name}`);
  }
  if (live !== session) return stopCapture(session);
  const language = ui.language.value;
  send("stream_start", {
    format: "pcm_s16le", sample_rate: session.ctx.sampleRate, channels: 1,
    ...(language !== "auto" ? { language } : {}),
  });
  startTranscript(null, `earshot-live-${new Date().toISOString().slice(0, 19).replaceAll(":", "-")}`);
  setState("Listening…");
}

function onStreamStarted(d) {
  if (!live || live.taskId) return;
  live.taskId = d.task_id;
  transcript.taskId = d.task_id;
  for (const frame of live.pending) sendAudio(frame);
  live.pending = [];
}

function onPcm(session, buffer) {
  if (live !== session || session.ending) return;
  if (!session.taskId) {
    if (session.pending.length < 50) session.pending.push(buffer); // ≤ 5 s before stream_started
    return;
  }
  sendAudio(buffer);
}

function sendAudio(buffer) {
  if (!conn.open) return;
  const frame = new Uint8Array(buffer.byteLength + 1);
  frame[0] = KIND_AUDIO;
  frame.set(new Uint8Array(buffer), 1);
  conn.ws.send(frame);
}

/** Stops the microphone; with `finish`, asks the server for the final text. */
async function stopLive(finish = true) {
  const session = live;
  if (!session || session.stopping) return;
  session.stopping = true;
  setMicButton(false);
  ui.mic.disabled = true; // until the final text is in
  if (session.node) {
    session.node.port.postMessage("flush");
    await new Promise((r) => setTimeout(r, 120)); // let the last partial frame arrive
  }
  session.ending = true;
  stopCapture(session);
  if (finish && session.taskId) {
    send("stream_end", { task_id: session.taskId });
    setState("Finishing…");
  } else {
    live = null;
    ui.mic.disabled = !conn.open;
    setState("");
  }
}

function stopCapture(session = live) {
  if (!session) return;
  session.media?.getTracks().forEach((t) => t.stop());
  session.node?.disconnect();
  session.ctx?.close().catch(() => {});
  session.media = session.node = null;
}

function setMicButton(on) {
  ui.mic.setAttribute("aria-pressed", String(on));
  ui.micLabel.textContent = on ? "Stop microphone" : "Start microphone";
}

function onLag(d) {
  if (!live || d.task_id !== live.taskId) return;
  ui.lag.hidden = false;
  ui.lag.textContent = `The server is busy: transcription is ${d.behind_seconds.toFixed(1)} s behind your voice.`;
  clearTimeout(lagTimer);
  lagTimer = setTimeout(() => { ui.lag.hidden = true; }, 4000);
}

// ---------------------------------------------------------------------------------------
// Upload
// ---------------------------------------------------------------------------------------

/**
 * The upload in progress, or null. `next` is the next chunk never sent; `resend` holds chunks
 * to send again (after a resume or a corrupted chunk); `through` is the server's
 * `received_through` (everything below is stored), which bounds the window.
 */
let upload = null;

async function chooseFile(file) {
  if (!file) return;
  if (upload && !upload.uploaded && !upload.failed) {
    return showAlert("An upload is already in progress; wait for it to finish or reload the page.");
  }
  hideAlert();
  const saved = loadSaved();
  const sameAsSaved = saved && saved.name === file.name && saved.size === file.size && saved.lastModified === file.lastModified;
  if (saved && !sameAsSaved) forgetSaved();
  upload = {
    file, taskId: sameAsSaved ? saved.taskId : null, md5: sameAsSaved ? saved.md5 : null,
    chunkSize: sameAsSaved ? saved.chunkSize : Math.min(CHUNK_SIZE, conn.limits?.max_chunk_bytes ?? CHUNK_SIZE),
    total: 0, window: 16, next: 0, resend: [], through: 0, received: 0,
    sending: false, paused: false, uploaded: false, failed: false, awaitingReady: false,
    rate: [], moreMissing: false, resumeTarget: 0,
  };
  upload.total = Math.ceil(file.size / upload.chunkSize);
  ui.resume.hidden = true;
  ui.upload.hidden = false;
  ui.pause.hidden = false;
  ui.pause.disabled = false;
  ui.pause.textContent = "Pause";
  ui.uploadName.textContent = `${file.name} (${formatBytes(file.size)})`;
  ui.progress.value = 0;
  startTranscript(upload.taskId, file.name);
  if (upload.taskId) {
    showUploadStats("Resuming…");
    if (conn.open) resumeUpload();
    return;
  }
  const current = upload;
  showUploadStats("Checking the file…");
  current.md5 = await md5OfBlob(file, (done) => {
    if (upload === current) showUploadStats(`Checking the file… ${Math.floor((done / file.size) * 100)}%`);
  });
  if (upload !== current) return;
  requestUpload();
}

function requestUpload() {
  if (!upload || !conn.open) return;
  const language = ui.language.value;
  upload.awaitingReady = true;
  upload.next = 0;
  upload.resend = [];
  upload.through = 0;
  stats.uploadsStarted++;
  send("upload_request", {
    file_name: upload.file.name, file_size: upload.file.size, file_hash: upload.md5,
    upload_mode: "chunked", chunk_size: upload.chunkSize, total_chunks: upload.total,
    transport: "binary", ...(language !== "auto" ? { language } : {}),
  });
  showUploadStats("Starting…");
}

function resumeUpload() {
  upload.awaitingReady = true;
  stats.resumes++;
  send("upload_resume", { task_id: upload.taskId });
}

function onUploadReady(d) {
  if (!upload || !upload.awaitingReady) return;
  if (upload.taskId && d.task_id !== upload.taskId) return;
  upload.awaitingReady = false;
  upload.taskId = d.task_id;
  transcript.taskId = d.task_id;
  upload.window = d.chunk_window ?? 16;
  if (d.missing_chunks) {
    // A resume: the server says what it lacks; everything else is stored.
    upload.resend = [...d.missing_chunks];
    upload.next = upload.total;
    upload.received = d.received_chunks ?? 0;
    upload.through = upload.resend.length ? upload.resend[0] : upload.total;
    upload.moreMissing = upload.received + upload.resend.length < upload.total;
    upload.resumeTarget = upload.received + upload.resend.length;
    stats.missingAtResume = d.missing_chunks.length;
    stats.sentSinceResume = 0;
  }
  saveUpload();
  ui.progress.value = (upload.received / upload.total) * 100;
  upload.rate = [];
  pump();
}

function onChunkAck(d) {
  if (!upload || d.task_id !== upload.taskId) return;
  upload.through = Math.max(upload.through, d.received_through);
  upload.received = d.received_chunks;
  ui.progress.value = d.progress;
  noteRate();
  if (upload.moreMissing && upload.resend.length === 0 && upload.received >= upload.resumeTarget) {
    upload.moreMissing = false; // the resume listed at most 1000 chunks: ask for the rest
    return resumeUpload();
  }
  pump();
}

/** Sends chunks while the window, the socket's buffer and the pause button allow. */
async function pump() {
  const u = upload;
  if (!u || u.sending || u.paused || u.awaitingReady || u.uploaded || u.failed || !conn.open) return;
  u.sending = true;
  const generation = conn.generation;
  try {
    while (upload === u && !u.paused && conn.open && generation === conn.generation) {
      const index = u.resend.length ? u.resend[0] : u.next < u.total ? u.next : -1;
      if (index < 0 || index >= u.through + u.window) break;
      if (conn.ws.bufferedAmount > MAX_BUFFERED) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      const start = index * u.chunkSize;
      const payload = new Uint8Array(await u.file.slice(start, start + u.chunkSize).arrayBuffer());
      if (generation !== conn.generation || !conn.open || upload !== u) break;
      conn.ws.send(chunkFrame(u.taskId, index, payload));
      stats.chunksSent++;
      stats.sentSinceResume++;
      if (u.resend.length && u.resend[0] === index) u.resend.shift();
      else u.next++;
    }
  } catch (err) {
    showAlert(`The file could not be read: ${err.message}. Choose it again.`);
    u.failed = true;
  } finally {
    u.sending = false;
  }
  // After a lost connection the page says so; the rate would hide that.
  if (!u.uploaded && !u.failed && conn.open) showRate();
}

/** Binary frame kind 0x04: [kind][task id: 16][index: u32 LE][crc32: u32 LE][payload]. */
function chunkFrame(taskId, index, payload) {
  const frame = new Uint8Array(25 + payload.length);
  const hex = taskId.replaceAll("-", "");
  frame[0] = KIND_CHUNK_CRC32;
  for (let i = 0; i < 16; i++) frame[1 + i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  const view = new DataView(frame.buffer);
  view.setUint32(17, index, true);
  view.setUint32(21, crc32(payload), true);
  frame.set(payload, 25);
  return frame;
}

function onUploadComplete(d) {
  if (!upload || d.task_id !== upload.taskId) return;
  upload.uploaded = true;
  ui.progress.value = 100;
  ui.pause.hidden = true;
  showUploadStats("Uploaded and verified — transcribing…");
  setState("Transcribing…");
}

function onTranscriptionProgress(d) {
  if (d.task_id !== transcript.taskId || transcript.done) return;
  setState(`Transcribing… ${Math.floor(d.progress)}%`);
}

function togglePause() {
  if (!upload) return;
  upload.paused = !upload.paused;
  ui.pause.textContent = upload.paused ? "Resume" : "Pause";
  if (upload.paused) showUploadStats(`Paused at ${Math.floor(ui.progress.value)}%`);
  else { upload.rate = []; pump(); }
}

function noteRate() {
  const now = performance.now();
  const bytes = Math.min(upload.file.size, upload.received * upload.chunkSize);
  upload.rate.push([now, bytes]);
  while (upload.rate.length > 2 && now - upload.rate[0][0] > 5000) upload.rate.shift();
  showRate();
}

function showRate() {
  const u = upload;
  if (!u) return;
  // Chunks in flight when Pause was pressed are still acknowledged: keep the number true.
  if (u.paused) return showUploadStats(`Paused at ${Math.floor(ui.progress.value)}%`);
  const done = Math.min(u.file.size, u.received * u.chunkSize);
  let text = `${Math.floor((done / u.file.size) * 100)}% · ${formatBytes(done)} of ${formatBytes(u.file.size)}`;
  if (u.rate.length >= 2) {
    const [t0, b0] = u.rate[0];
    const [t1, b1] = u.rate[u.rate.length - 1];
    const perSec = ((b1 - b0) * 1000) / Math.max(1, t1 - t0);
    if (perSec > 0) text += ` · ${formatBytes(perSec)}/s · ${formatDuration((u.file.size - done) / perSec)} left`;
  }
  showUploadStats(text);
}

function showUploadStats(text) {
  ui.stats.textContent = text;
}

// Task id and file identity survive a reload, so the same file can be resumed.
function saveUpload() {
  const u = upload;
  localStorage.setItem(STORE_KEY, JSON.stringify({
    taskId: u.taskId, name: u.file.name, size: u.file.size, lastModified: u.file.lastModified,
    chunkSize: u.chunkSize, md5: u.md5,
  }));
}

function loadSaved() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY) ?? "null"); } catch { return null; }
}

function forgetSaved() {
  localStorage.removeItem(STORE_KEY);
  ui.resume.hidden = true;
}

function showSaved() {
  const saved = loadSaved();
  if (!saved) return;
  ui.resumeName.textContent = `${saved.name} (${formatBytes(saved.size)})`;
  ui.resume.hidden = false;
}

// ---------------------------------------------------------------------------------------
// Small helpers and wiring
// ---------------------------------------------------------------------------------------

function showAlert(text) { ui.alert.textContent = text; ui.alert.hidden = false; }
function hideAlert() { ui.alert.hidden = true; }
function setState(text) { ui.state.textContent = text; }

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

ui.mic.addEventListener("click", () => (live ? stopLive() : startLive()));
ui.file.addEventListener("change", () => { chooseFile(ui.file.files[0]); ui.file.value = ""; });
ui.pause.addEventListener("click", togglePause);
ui.forget.addEventListener("click", forgetSaved);
ui.downloads.forEach((b) => b.addEventListener("click", () => download(b.dataset.format)));
for (const name of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(name, (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  ui.drop.addEventListener(name, () => ui.drop.classList.remove("over"));
}
ui.drop.addEventListener("drop", (e) => { e.preventDefault(); chooseFile(e.dataTransfer.files[0]); });
// A file dropped anywhere else must not make the browser navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

showSaved();
connect();
