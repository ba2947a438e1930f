// The page's line to the server: one WebSocket to `/` speaking docs/PROTOCOL.md, reconnected
// with backoff; the binary frames the page sends on it (live audio, kind 0x02; CRC-32 checked
// upload chunks, kind 0x04); and `fetchResult`, a finished task's transcript rendered by the
// server (GET /v1/tasks/{id}?response_format=…).
//
// Keys: the page sends none of its own. With API keys on, the server wants
// `Authorization: Bearer` on every request, the page's own `GET /` included (`?token=` counts
// only on a WebSocket upgrade), so the page loads only behind something that adds the header
// (a reverse proxy) — and that adds it to the page's same-origin requests here as well.
//
// This module must not decide what a message means for an upload, a stream or the
// transcript: it hands every message to the handler given to `connect`.

import { crc32 } from "./hash.js";
import { ui } from "./ui.js";

/** Bytes the page lets queue in the WebSocket before a sender waits. */
const MAX_BUFFERED = 8 << 20;
const KIND_AUDIO = 0x02;
const KIND_CHUNK_CRC32 = 0x04;

/** Counters the browser tests read (window.earshotStats); upload.js and live.js count theirs in it. */
export const stats = {
  connections: 0, chunksSent: 0, resumes: 0, uploadsStarted: 0, missingAtResume: null, sentSinceResume: 0,
  streamResumes: 0, streamReceivedAtResume: null, streamSentAtResume: null, streamBytes: 0, streamRate: null,
};

/**
 * The socket and what the server said in `connected`. `generation` counts sockets, so a
 * sender that started on an older one can tell and stop.
 */
const line = { ws: null, open: false, limits: null, model: "", retryMs: 500, generation: 0 };
/** Where messages and losses go (set by `connect`). */
const handlers = { message: () => {}, lost: () => {} };

/** Opens the connection; `onMessage(type, data)` gets every server message, `onLost()` each drop. */
export function connect(onMessage, onLost) {
  handlers.message = onMessage;
  handlers.lost = onLost;
  open();
}

function open() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/");
  ws.binaryType = "arraybuffer";
  const generation = ++line.generation;
  line.ws = ws;
  showLine("Connecting…", "");
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    if (msg.type === "connected") opened(msg.data ?? {});
    handlers.message(msg.type, msg.data ?? {});
  };
  ws.onclose = () => {
    if (generation !== line.generation) return;
    line.open = false;
    showLine("Disconnected — reconnecting…", "bad");
    handlers.lost();
    setTimeout(open, line.retryMs);
    line.retryMs = Math.min(line.retryMs * 2, 10000);
  };
}

function opened(d) {
  line.open = true;
  line.retryMs = 500;
  line.limits = d.limits;
  line.model = d.model ?? "";
  line.models = d.models?.length ? d.models : [line.model];
  stats.connections++;
  showLine(`Connected · model ${line.model}`, "ok");
}

function showLine(text, cls) {
  ui.conn.textContent = text;
  ui.conn.className = "pill " + cls;
}

export const isOpen = () => line.open;
/** Which socket this is: changes on every reconnection. */
export const generation = () => line.generation;
/** The server's `limits` from `connected` (null before the first connection). */
export const limits = () => line.limits;
/** The server's default model, e.g. "tiny.en". */
export const model = () => line.model;
/** Every model a request may name, the default first. */
export const models = () => line.models ?? [];
/** Whether the socket has so much queued that a sender should wait. */
export const congested = () => line.ws.bufferedAmount > MAX_BUFFERED;

/** Sends a protocol message; dropped while disconnected (the callers resume on reconnection). */
export function send(type, data) {
  if (line.open) line.ws.send(JSON.stringify({ type, data }));
}

/** Sends PCM as a live audio frame: [kind 0x02][s16le samples]. */
export function sendAudio(buffer) {
  if (!line.open) return;
  const frame = new Uint8Array(buffer.byteLength + 1);
  frame[0] = KIND_AUDIO;
  frame.set(new Uint8Array(buffer), 1);
  line.ws.send(frame);
}

/** Sends an upload chunk: [kind 0x04][task id: 16][index: u32 LE][crc32: u32 LE][payload]. */
export function sendChunk(taskId, index, payload) {
  const frame = new Uint8Array(25 + payload.length);
  const hex = taskId.replaceAll("-", "");
  frame[0] = KIND_CHUNK_CRC32;
  for (let i = 0; i < 16; i++) frame[1 + i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  const view = new DataView(frame.buffer);
  view.setUint32(17, index, true);
  view.setUint32(21, crc32(payload), true);
  frame.set(payload, 25);
  line.ws.send(frame);
}

/** A finished task's transcript as the server renders it (`format`: an OpenAI response_format). */
export function fetchResult(taskId, format) {
  const query = new URLSearchParams({ response_format: format });
  return fetch(`/v1/tasks/${encodeURIComponent(taskId)}?${query}`);
}
