// Live transcription from the microphone: getUserMedia → AudioWorklet (worklet.js) → 16-bit
// PCM at the context's rate → live audio frames after `stream_start`; `stream_end` on Stop,
// and the server's final text ends the stream.
//
// This module must not touch uploads, and must not draw text itself: it points the transcript
// at the stream's task, and transcript.js shows what the server sends for it.

import { isOpen, send, sendAudio } from "./connection.js";
import * as transcript from "./transcript.js";
import { ui, showAlert, hideAlert, showStatus } from "./ui.js";

/** PCM messages (~100 ms each) kept while the server has not yet named the stream's task. */
const MAX_PENDING = 50;

/**
 * The open stream, or null. Its `state` is exactly one of
 *   capturing — the microphone is (being) opened; its PCM goes to the server, or waits in
 *               `pending` until `stream_started` names the task
 *   flushing  — Stop was pressed; the worklet's last partial frame still goes out
 *   finishing — capture closed and `stream_end` sent; waiting for the final text
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
  const s = { state: "capturing", taskId: null, pending: [], ctx: null, media: null, node: null };
  stream = s;
  setMicButton(true);
  try {
    s.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    s.ctx = new AudioContext();
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
  send("stream_start", {
    format: "pcm_s16le", sample_rate: s.ctx.sampleRate, channels: 1,
    ...(language !== "auto" ? { language } : {}),
    ...(ui.model.value ? { model: ui.model.value } : {}),
  });
  transcript.start(null, `earshot-live-${new Date().toISOString().slice(0, 19).replaceAll(":", "-")}`);
  showStatus("Listening…");
}

function onPcm(s, buffer) {
  if (stream !== s || s.state === "finishing") return;
  if (!s.taskId) {
    if (s.pending.length < MAX_PENDING) s.pending.push(buffer);
    return;
  }
  sendAudio(buffer);
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
  if (stream !== s) return showStatus(""); // the connection was lost meanwhile
  if (finish && s.taskId) {
    send("stream_end", { task_id: s.taskId });
    showStatus("Finishing…");
  } else {
    stream = null;
    ui.mic.disabled = !isOpen();
    showStatus("");
  }
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
  if (!stream || stream.taskId) return;
  stream.taskId = d.task_id;
  transcript.adopt(d.task_id);
  for (const frame of stream.pending) sendAudio(frame);
  stream.pending = [];
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
  stream = null;
  ui.lag.hidden = true;
  ui.mic.disabled = !isOpen();
}

/** The server refused something: a stream it has not started yet is given up. */
export function onRefused() {
  if (stream && !stream.taskId) stop(false);
}

export function onConnected() {
  ui.mic.disabled = false;
}

/** The connection dropped: a live stream cannot survive that (its audio is gone). */
export function onLost() {
  ui.mic.disabled = true;
  if (!stream) return;
  closeCapture(stream);
  stream = null;
  setMicButton(false);
  showAlert("The connection was lost, so the live stream ended. Start the microphone again when it is back.");
}
