// Live transcription from the microphone: getUserMedia → AudioWorklet (worklet.js) → 16-bit
// PCM at the context's rate → live audio frames after `stream_start`; `stream_end` on Stop,
// and the server's final text ends the stream.
//
// A dropped connection does not end the stream (docs/PROTOCOL.md §9.1): the microphone keeps
// capturing into `kept`, connection.js reconnects with backoff, and the page sends
// `stream_start` with the stream's `task_id`, `resume: true` and the index of the first segment
// it lacks. The server answers how many audio bytes it took in; the page sends on from exactly
// there, so no audio is lost or sent twice. `kept` holds the audio the server may not have yet
// (in flight when the link died, or captured while it was down) and is bounded: past
// MAX_KEPT_SECONDS of unsent audio the stream is given up, with what the server received.
//
// This module must not touch uploads, and must not draw text itself: it points the transcript
// at the stream's task, and transcript.js shows what the server sends for it.

import { isOpen, send, sendAudio, stats } from "./connection.js";
import * as transcript from "./transcript.js";
import { ui, showAlert, hideAlert, showStatus } from "./ui.js";

/**
 * Audio kept for a resume, in seconds: more than the server's resume grace (30 s by default),
 * and far more than what can be in flight when a connection dies.
 */
const MAX_KEPT_SECONDS = 40;

/**
 * The open stream, or null. Its `state` is exactly one of
 *   capturing — the microphone is (being) opened; its PCM goes to the server, or waits in
 *               `kept` until `stream_started` names the task (or the connection is back)
 *   flushing  — Stop was pressed; the worklet's last partial frame still goes out
 *   finishing — capture closed and `stream_end` sent (or owed once the link is back);
 *               waiting for the final text
 * and its `link` one of
 *   up        — the connection carries the stream; audio goes out as it is captured
 *   down      — the connection dropped; audio is kept until the page is connected again
 *   resuming  — `stream_start` (resume, or a first start that never got its answer) is sent;
 *               audio is kept until `stream_started` says where the server stands
 * `kept` holds captured audio from byte `keptFrom` of the stream on; `sentTo` is the byte up to
 * which it went out on the current connection.
 */
let stream = null;
let lagTimer = 0;

/** Whether a stream is open (the microphone button then stops it). */
export const active = () => stream !== null;

/** Whether `taskId` is this stream's task. */
export const owns = (taskId) => Boolean(taskId) && taskId === stream?.taskId;

export async function start() {
  if (!isOpen()) return showAlert("Not connected to the server yet.");
  hideAlert();
  const s = {
    state: "capturing", link: "resuming", taskId: null, startMsg: null,
    kept: [], keptFrom: 0, keptBytes: 0, sentTo: 0, endOwed: false,
    ctx: null, media: null, node: null,
  };
  stream = s;
  setMicButton(true);
  try {
    s.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    s.ctx = new AudioContext();
    s.maxKept = MAX_KEPT_SECONDS * s.ctx.sampleRate * 2;
    stats.streamRate = s.ctx.sampleRate;
    await s.ctx.audioWorklet.addModule("worklet.js");
    const source = s.ctx.createMediaStreamSource(s.media);
    s.node = new AudioWorkletNode(s.ctx, "pcm-capture");
    const mute = s.ctx.createGain();
    mute.gain.value = 0; // keeps the graph pulling without playing the microphone back
    source.connect(s.node).connect(mute).connect(s.ctx.destination);
    s.node.port.onmessage = (e) => onPcm(s, e.data);
  } catch (err) {
    closeCapture(s);
    if (stream === s) stream = null;
    setMicButton(false);
    return showAlert(`The microphone could not be opened: ${err.message || err.name}`);
  }
  if (stream !== s) return closeCapture(s); // stopped while the microphone was opening
  const language = ui.language.value;
  s.startMsg = {
    format: "pcm_s16le", sample_rate: s.ctx.sampleRate, channels: 1,
    ...(language !== "auto" ? { language } : {}),
    ...(ui.model.value ? { model: ui.model.value } : {}),
  };
  transcript.start(null, `earshot-live-${new Date().toISOString().slice(0, 19).replaceAll(":", "-")}`);
  if (isOpen()) send("stream_start", s.startMsg);
  else s.link = "down";
  showStatus("Listening…");
}

function onPcm(s, buffer) {
  if (stream !== s || s.state === "finishing") return;
  s.kept.push(buffer);
  s.keptBytes += buffer.byteLength;
  stats.streamBytes = s.keptFrom + s.keptBytes;
  if (s.link === "up") sendKept(s);
  trimKept(s);
}

/** Sends the kept audio the current connection has not carried yet. */
function sendKept(s) {
  let at = s.keptFrom;
  for (const buffer of s.kept) {
    const end = at + buffer.byteLength;
    if (end > s.sentTo) {
      sendAudio(s.sentTo > at ? buffer.slice(s.sentTo - at) : buffer);
      s.sentTo = end;
    }
    at = end;
  }
}

/**
 * Forgets the oldest audio that went out while more than the bound is kept; gives the stream
 * up when the audio not yet sent alone is over it (the connection has been down too long).
 */
function trimKept(s) {
  while (s.keptBytes > s.maxKept && s.kept.length && s.keptFrom + s.kept[0].byteLength <= s.sentTo) {
    dropFirst(s);
  }
  if (s.keptBytes <= s.maxKept) return;
  closeCapture(s);
  stream = null;
  setMicButton(false);
  ui.mic.disabled = !isOpen();
  showStatus("");
  showAlert(`The connection was down for more than ${MAX_KEPT_SECONDS} s, so the live stream ended. `
    + "The server keeps what it received; start the microphone again when the connection is back.");
}

function dropFirst(s) {
  const first = s.kept.shift();
  s.keptFrom += first.byteLength;
  s.keptBytes -= first.byteLength;
}

/** The server took in the stream's audio up to byte `received`: what is before is not needed. */
function receivedUpTo(s, received) {
  while (s.kept.length && s.keptFrom + s.kept[0].byteLength <= received) dropFirst(s);
  if (s.kept.length && received > s.keptFrom) {
    const cut = received - s.keptFrom;
    s.keptBytes -= cut;
    s.kept[0] = s.kept[0].slice(cut);
    s.keptFrom = received;
  }
  if (received < s.keptFrom) {
    // Only audio older than the bound is ever forgotten, so this is not expected.
    console.warn(`the server lacks ${s.keptFrom - received} bytes the page no longer has`);
  }
  s.sentTo = Math.max(received, s.keptFrom);
}

/** Stops the microphone; with `finish`, asks the server for the final text. */
export async function stop(finish = true) {
  const s = stream;
  if (!s || s.state !== "capturing") return;
  s.state = "flushing";
  setMicButton(false);
  ui.mic.disabled = true; // until the final text is in
  if (s.node) {
    s.node.port.postMessage("flush");
    await new Promise((r) => setTimeout(r, 120)); // let the last partial frame arrive
  }
  s.state = "finishing";
  closeCapture(s);
  if (stream !== s) return; // given up meanwhile
  if (finish) {
    s.endOwed = true;
    endIfUp(s);
    showStatus(s.link === "up" ? "Finishing…" : "Finishing once the connection is back…");
  } else {
    stream = null;
    ui.mic.disabled = !isOpen();
    showStatus("");
  }
}

/** Sends the owed `stream_end` once the connection carries the stream. */
function endIfUp(s) {
  if (!s.endOwed || s.link !== "up" || !s.taskId) return;
  send("stream_end", { task_id: s.taskId });
  s.endOwed = false;
}

function closeCapture(s) {
  s.media?.getTracks().forEach((t) => t.stop());
  s.node?.disconnect();
  s.ctx?.close().catch(() => {});
  s.media = s.node = null;
}

function setMicButton(on) {
  ui.mic.setAttribute("aria-pressed", String(on));
  ui.micLabel.textContent = on ? "Stop microphone" : "Start microphone";
}

export function onStarted(d) {
  const s = stream;
  if (!s || s.link !== "resuming") return;
  if (d.resumed) {
    if (d.task_id !== s.taskId) return;
    stats.streamResumes++;
    stats.streamReceivedAtResume = d.received_bytes;
    stats.streamSentAtResume = Math.max(0, s.keptFrom + s.keptBytes - d.received_bytes);
    receivedUpTo(s, d.received_bytes);
    showStatus(s.state === "capturing" ? "Listening… (reconnected)" : "Finishing…");
  } else {
    if (s.taskId) return;
    s.taskId = d.task_id;
    transcript.adopt(d.task_id);
    s.sentTo = s.keptFrom;
  }
  s.link = "up";
  sendKept(s);
  trimKept(s);
  endIfUp(s);
}

export function onLag(d) {
  if (!owns(d.task_id)) return;
  ui.lag.hidden = false;
  ui.lag.textContent = `The server is busy: transcription is ${d.behind_seconds.toFixed(1)} s behind your voice.`;
  clearTimeout(lagTimer);
  lagTimer = setTimeout(() => { ui.lag.hidden = true; }, 4000);
}

export function onComplete(d) {
  if (!owns(d.task_id)) return;
  if (stream.state !== "finishing") closeCapture(stream); // ended by the server (grace over)
  stream = null;
  setMicButton(false);
  ui.lag.hidden = true;
  ui.mic.disabled = !isOpen();
}

/** The server refused something: a stream it has not started yet is given up. */
export function onRefused() {
  const s = stream;
  if (!s || s.taskId) return;
  if (s.state === "capturing") return stop(false);
  closeCapture(s);
  stream = null;
  ui.mic.disabled = !isOpen();
  showStatus("");
}

/**
 * Takes the errors about this stream's resume: a stream the server has finished meanwhile
 * (its grace period ran out) is over; its transcript is fetched. Returns whether it took `d`.
 */
export function absorb(d) {
  const s = stream;
  if (!s || d.code !== "session_not_found" || !owns(d.task_id) || s.link !== "resuming") return false;
  const ended = s.state === "finishing" && !s.endOwed; // it ended by our stream_end
  closeCapture(s);
  s.state = "finishing";
  s.link = "up";
  setMicButton(false);
  ui.mic.disabled = true;
  if (!ended) showAlert("The connection was down too long, so the live stream ended with what the server received.");
  send("get_result", { task_id: s.taskId });
  return true;
}

export function onConnected() {
  const s = stream;
  ui.mic.disabled = Boolean(s && s.state !== "capturing");
  if (!s || s.link !== "down") return;
  s.link = "resuming";
  if (s.taskId) {
    send("stream_start", { task_id: s.taskId, resume: true, next_index: transcript.held() });
    showStatus("Reconnected; resuming the stream…");
  } else {
    send("stream_start", s.startMsg); // the first start got no answer: start afresh
  }
}

/** The connection dropped: the stream is kept and resumed when the page is connected again. */
export function onLost() {
  const s = stream;
  if (!s) {
    ui.mic.disabled = true;
    return;
  }
  s.link = "down";
  showStatus("Connection lost — reconnecting; your speech is kept meanwhile…");
}
