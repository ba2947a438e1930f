// Resumable uploads: the file's MD5 (`file_hash`), `upload_request` with transport "binary",
// CRC-32 checked chunk frames within the server's window, Pause and Resume. The task id and the
// file's identity are kept in localStorage, so after a lost connection or a reload the page
// sends `upload_resume` and only the chunks the server says it lacks.
//
// This module must not open the connection (connection.js does, and app.js tells this module
// when it comes and goes) or draw the transcript (it points transcript.js at the upload's task).

import * as connection from "./connection.js";
import { md5OfBlob } from "./hash.js";
import * as transcript from "./transcript.js";
import { ui, showAlert, hideAlert, showStatus, formatBytes, formatDuration } from "./ui.js";

/** Chunk size for uploads; `?chunk_size=` overrides it (tests use small chunks). */
const CHUNK_SIZE = positiveInt(new URLSearchParams(location.search).get("chunk_size")) ?? 1 << 20;
const STORE_KEY = "earshot.upload";
/** Error codes after which the upload cannot go on, so it is forgotten. */
const FATAL = ["file_hash_mismatch", "too_large", "quota_exceeded", "unsupported_audio", "invalid_chunk", "internal"];

function positiveInt(s) {
  const n = Number.parseInt(s ?? "", 10);
  return Number.isFinite(n) && n > 0 ? n : null;
}

/**
 * Where the upload stands — exactly one of:
 *   idle          no upload yet
 *   hashing       computing the file's MD5
 *   requesting    `upload_request` or `upload_resume` sent; waiting for `upload_ready`
 *   uploading     sending chunks as the window allows
 *   paused        the user paused it; nothing is sent
 *   reconnecting  no connection; the request (or resume) goes out when it is back
 *   transcribing  every chunk stored and verified; the server is transcribing
 *   done          transcribed
 *   failed        it cannot go on (the alert or the stats line says why)
 */
let state = "idle";

/**
 * The upload's data, null while idle. `next` is the next chunk never sent; `resend` holds
 * chunks to send again (after a resume or a corrupted chunk); `through` is the server's
 * `received_through` (everything below is stored), which bounds the window. A resume lists at
 * most 1000 missing chunks: `askAgainAt` is the count of received chunks at which the page
 * asks for the rest. `synced` is the connection generation of the last `upload_ready`, so
 * Resume knows whether the server's view is still this connection's. `pumping` is the send
 * loop's own guard (an ack must not start a second loop), not a state of the upload.
 */
let job = null;

/** Whether an upload is on hand (one not yet transcribed, or failed). */
const onHand = () => state !== "idle" && state !== "done";

/** Whether `taskId` is the upload's, or the unfinished one remembered from before. */
export function owns(taskId) {
  return Boolean(taskId) && ((onHand() && taskId === job.taskId) || taskId === loadSaved()?.taskId);
}

function setState(next) {
  state = next;
  ui.pause.disabled = next !== "uploading" && next !== "paused";
  ui.pause.textContent = next === "paused" ? "Resume" : "Pause";
  ui.pause.hidden = next === "transcribing" || next === "done";
}

/** Starts (or, for the file remembered from before, resumes) uploading `file`. */
export async function choose(file) {
  if (!file) return;
  if (["hashing", "requesting", "uploading", "paused", "reconnecting"].includes(state)) {
    return showAlert("An upload is already in progress; wait for it to finish or reload the page.");
  }
  hideAlert();
  const saved = loadSaved();
  const same = saved && saved.name === file.name && saved.size === file.size && saved.lastModified === file.lastModified;
  if (saved && !same) forget();
  const chunkSize = same ? saved.chunkSize : Math.min(CHUNK_SIZE, connection.limits()?.max_chunk_bytes ?? CHUNK_SIZE);
  const u = {
    file, taskId: same ? saved.taskId : null, md5: same ? saved.md5 : null,
    chunkSize, total: Math.ceil(file.size / chunkSize), window: 16,
    next: 0, resend: [], through: 0, received: 0, rate: [], askAgainAt: null, synced: 0, pumping: false,
  };
  job = u;
  ui.resume.hidden = true;
  ui.upload.hidden = false;
  ui.uploadName.textContent = `${file.name} (${formatBytes(file.size)})`;
  ui.progress.value = 0;
  transcript.start(u.taskId, file.name);
  if (u.taskId) {
    showStats("Resuming…");
    return ask();
  }
  setState("hashing");
  showStats("Checking the file…");
  try {
    u.md5 = await md5OfBlob(file, (done) => {
      if (job === u) showStats(`Checking the file… ${Math.floor((done / file.size) * 100)}%`);
    });
  } catch (err) {
    if (job === u) cannotRead(err);
    return;
  }
  if (job === u) ask();
}

/** Asks the server for the upload (`upload_resume` once it has a task id), or waits for a connection. */
function ask() {
  if (!connection.isOpen()) return setState("reconnecting");
  setState("requesting");
  if (job.taskId) {
    connection.stats.resumes++;
    return connection.send("upload_resume", { task_id: job.taskId });
  }
  const language = ui.language.value;
  job.next = 0;
  job.resend = [];
  job.through = 0;
  connection.stats.uploadsStarted++;
  connection.send("upload_request", {
    file_name: job.file.name, file_size: job.file.size, file_hash: job.md5,
    upload_mode: "chunked", chunk_size: job.chunkSize, total_chunks: job.total,
    transport: "binary", ...(language !== "auto" ? { language } : {}),
    ...(ui.model.value ? { model: ui.model.value } : {}),
  });
  showStats("Starting…");
}

export function onReady(d) {
  if (state !== "requesting" || (job.taskId && d.task_id !== job.taskId)) return;
  const u = job;
  u.taskId = d.task_id;
  transcript.adopt(d.task_id);
  u.window = d.chunk_window ?? 16;
  u.synced = connection.generation();
  if (d.missing_chunks) {
    // A resume: the server says what it lacks; everything else is stored.
    u.resend = [...d.missing_chunks];
    u.next = u.total;
    u.received = d.received_chunks ?? 0;
    u.through = u.resend.length ? u.resend[0] : u.total;
    const listed = u.received + u.resend.length;
    u.askAgainAt = listed < u.total ? listed : null;
    connection.stats.missingAtResume = d.missing_chunks.length;
    connection.stats.sentSinceResume = 0;
  }
  saveUpload();
  ui.progress.value = (u.received / u.total) * 100;
  u.rate = [];
  setState("uploading");
  pump();
}

export function onAck(d) {
  if (!job || d.task_id !== job.taskId) return;
  job.through = Math.max(job.through, d.received_through);
  job.received = d.received_chunks;
  ui.progress.value = d.progress;
  noteRate();
  if (state === "uploading") proceed();
}

/** Goes on sending, first asking for the rest of a long missing list once it is sent. */
function proceed() {
  const u = job;
  if (u.askAgainAt !== null && u.resend.length === 0 && u.received >= u.askAgainAt) {
    u.askAgainAt = null;
    return ask();
  }
  pump();
}

/** Sends chunks while the state, the window and the socket's buffer allow. */
async function pump() {
  const u = job;
  if (state !== "uploading" || u.pumping || !connection.isOpen()) return;
  u.pumping = true;
  const generation = connection.generation();
  const mayGoOn = () => job === u && state === "uploading" && connection.isOpen() && generation === connection.generation();
  try {
    while (mayGoOn()) {
      const index = u.resend.length ? u.resend[0] : u.next < u.total ? u.next : -1;
      if (index < 0 || index >= u.through + u.window) break;
      if (connection.congested()) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      const start = index * u.chunkSize;
      const payload = new Uint8Array(await u.file.slice(start, start + u.chunkSize).arrayBuffer());
      if (!mayGoOn()) break;
      connection.sendChunk(u.taskId, index, payload);
      connection.stats.chunksSent++;
      connection.stats.sentSinceResume++;
      if (u.resend.length && u.resend[0] === index) u.resend.shift();
      else u.next++;
    }
  } catch (err) {
    if (job === u) return cannotRead(err);
  } finally {
    u.pumping = false;
  }
  // After a lost connection the page says so; the rate would hide that.
  if (job === u && (state === "uploading" || state === "paused") && connection.isOpen()) showRate();
}

/** The file can no longer be read (moved, or access revoked): it is kept for choosing again. */
function cannotRead(err) {
  setState("failed");
  showAlert(`The file could not be read: ${err.message}. Choose it again.`);
}

export function onUploaded(d) {
  if (!job || d.task_id !== job.taskId) return;
  setState("transcribing");
  ui.progress.value = 100;
  showStats("Uploaded and verified — transcribing…");
  showStatus("Transcribing…");
}

export function onTranscribed(d) {
  const saved = loadSaved();
  const wasSaved = saved?.taskId === d.task_id;
  if (wasSaved) forget();
  if (wasSaved && !onHand() && transcript.taskId() !== d.task_id) {
    transcript.start(d.task_id, saved.name); // finished while the page was away: show it
  }
  if (!job || d.task_id !== job.taskId) return;
  setState("done");
  ui.progress.value = 100;
  showStats("Transcribed.");
}

export function togglePause() {
  if (state === "uploading") {
    setState("paused");
    showStats(`Paused at ${Math.floor(ui.progress.value)}%`);
  } else if (state === "paused") {
    job.rate = [];
    if (!connection.isOpen()) {
      setState("reconnecting");
      showLost();
    } else if (job.synced !== connection.generation()) {
      ask(); // the connection changed while paused: ask what the server has
    } else {
      setState("uploading");
      proceed();
    }
  }
}

export function onConnected() {
  if (state === "reconnecting") return ask();
  if (state === "transcribing") return connection.send("get_result", { task_id: job.taskId }); // may still run
  if (onHand()) return; // hashing (it asks when done), paused (Resume asks), failed
  const saved = loadSaved();
  if (!saved) return;
  // Finished (or transcribing) while we were away? Then its segments stream in here.
  if (transcript.taskId() !== saved.taskId) transcript.start(saved.taskId, saved.name);
  connection.send("get_result", { task_id: saved.taskId });
}

export function onLost() {
  if (state === "requesting" || state === "uploading") setState("reconnecting");
  if (state === "reconnecting") showLost();
}

function showLost() {
  showStats(`Connection lost — ${Math.floor(ui.progress.value)}% is safe on the server; resuming automatically…`);
}

/** A `busy` refusal: asks again after `wait` ms if it refused this upload's request. */
export function onBusy(wait) {
  if (state !== "requesting") return false;
  const u = job;
  setTimeout(() => { if (job === u && state === "requesting" && connection.isOpen()) ask(); }, wait);
  return true;
}

/** Handles an error only the upload can act on; true when the page should show nothing. */
export function absorb(d) {
  if (!d.task_id) return false;
  if (job && d.task_id === job.taskId && d.code === "chunk_hash_mismatch") {
    job.resend.push(d.chunk_index); // corrupted on the way: send it again
    job.resend.sort((a, b) => a - b);
    pump();
    return true;
  }
  if (d.code !== "session_not_found") return false;
  if (job && d.task_id === job.taskId && ["requesting", "uploading", "paused", "reconnecting"].includes(state)) {
    // The server no longer knows this upload (expired): start it again from scratch.
    forget();
    job.taskId = null;
    ask();
    return true;
  }
  // The unfinished upload remembered from before: resuming it needs the file.
  return !onHand() && d.task_id === loadSaved()?.taskId;
}

/** An error the page showed: one the upload cannot survive ends it. */
export function onFailure(d) {
  if (!onHand() || !owns(d.task_id) || !FATAL.includes(d.code)) return;
  forget();
  setState("failed");
  showStats("Upload failed: " + (d.message || d.code));
  showStatus("");
}

function noteRate() {
  const now = performance.now();
  const bytes = Math.min(job.file.size, job.received * job.chunkSize);
  job.rate.push([now, bytes]);
  while (job.rate.length > 2 && now - job.rate[0][0] > 5000) job.rate.shift();
  showRate();
}

function showRate() {
  const u = job;
  // Chunks in flight when Pause was pressed are still acknowledged: keep the number true.
  if (state === "paused") return showStats(`Paused at ${Math.floor(ui.progress.value)}%`);
  const done = Math.min(u.file.size, u.received * u.chunkSize);
  let text = `${Math.floor((done / u.file.size) * 100)}% · ${formatBytes(done)} of ${formatBytes(u.file.size)}`;
  if (u.rate.length >= 2) {
    const [t0, b0] = u.rate[0];
    const [t1, b1] = u.rate[u.rate.length - 1];
    const perSec = ((b1 - b0) * 1000) / Math.max(1, t1 - t0);
    if (perSec > 0) text += ` · ${formatBytes(perSec)}/s · ${formatDuration((u.file.size - done) / perSec)} left`;
  }
  showStats(text);
}

function showStats(text) {
  ui.stats.textContent = text;
}

// Task id and file identity survive a reload, so the same file can be resumed.
function saveUpload() {
  localStorage.setItem(STORE_KEY, JSON.stringify({
    taskId: job.taskId, name: job.file.name, size: job.file.size, lastModified: job.file.lastModified,
    chunkSize: job.chunkSize, md5: job.md5,
  }));
}

function loadSaved() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY) ?? "null"); } catch { return null; }
}

/** Forgets the remembered upload (the "Forget it" button, or when it is over). */
export function forget() {
  localStorage.removeItem(STORE_KEY);
  ui.resume.hidden = true;
}

/** Offers to resume the upload remembered from before, if there is one. */
export function offerSaved() {
  const saved = loadSaved();
  if (!saved) return;
  ui.resumeName.textContent = `${saved.name} (${formatBytes(saved.size)})`;
  ui.resume.hidden = false;
}
