// The transcript on screen: one task's finished segments plus the live partial tail, its
// progress and "Done" line, and the downloads. A download is the server's own rendering of the
// finished task (GET /v1/tasks/{id}?response_format=…), so TXT, SRT, VTT and JSON from the
// page are byte for byte what the HTTP API gives.
//
// This module must not send protocol messages, format a transcript file itself, or care
// whether the text comes from the microphone or an upload.

import { fetchResult } from "./connection.js";
import { ui, showAlert, showStatus, formatDuration } from "./ui.js";

/** Download button → the server's response_format; the page's JSON is OpenAI's verbose_json. */
const RESPONSE_FORMAT = { txt: "text", srt: "srt", vtt: "vtt", json: "verbose_json" };

/**
 * What is shown: the task, the name downloads are saved under, its segments by index, the
 * partial (live only) with the revision it came in, and whether the server has finished it.
 */
let shown = blank(null, "transcript");

function blank(taskId, name) {
  return { taskId, name, segments: [], partial: "", revision: -1, done: false };
}

/** Clears the list to show task `taskId` (null until the server names it), saved as `name`. */
export function start(taskId, name) {
  shown = blank(taskId, name);
  ui.transcript.replaceChildren();
  draw();
}

/** The server named the task the transcript shows. */
export function adopt(taskId) {
  shown.taskId = taskId;
}

/** The task shown, or null. */
export const taskId = () => shown.taskId;

/** How many segments from index 0 on the page holds: a resumed stream asks for the rest. */
export function held() {
  let n = 0;
  while (shown.segments[n]) n++;
  return n;
}

export function onSegment(d) {
  if (d.task_id !== shown.taskId) return;
  shown.segments[d.index] = { start: d.start, end: d.end, text: d.text };
  shown.partial = ""; // the segment finalises what the partial guessed
  draw();
}

export function onPartial(d) {
  if (d.task_id !== shown.taskId || d.revision <= shown.revision) return;
  shown.revision = d.revision;
  shown.partial = d.text;
  draw();
}

export function onProgress(d) {
  if (d.task_id !== shown.taskId || shown.done) return;
  showStatus(`Transcribing… ${Math.floor(d.progress)}%`);
}

export function onComplete(d) {
  if (d.task_id !== shown.taskId) return;
  shown.segments = d.segments.map((s) => ({ start: s.start, end: s.end, text: s.text }));
  shown.partial = "";
  shown.done = true;
  draw();
  showStatus(`Done · ${d.language} · ${formatDuration(d.duration)} of audio`);
}

/**
 * Updates the list in place: finished segments are only ever added or corrected, so a
 * screen reader announces each once; the changing partial is hidden from it.
 */
function draw() {
  const finals = [...ui.transcript.querySelectorAll("li:not(.partial)")];
  let partial = ui.transcript.querySelector("li.partial");
  let at = 0;
  shown.segments.forEach((s, index) => {
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
  const tail = shown.partial.trim();
  if (!tail) partial?.remove();
  else if (partial) partial.lastChild.textContent = tail;
  else {
    partial = line("…", tail);
    partial.className = "partial";
    partial.setAttribute("aria-hidden", "true");
    ui.transcript.append(partial);
  }
  ui.empty.hidden = at > 0 || Boolean(tail);
  // The server renders a task once it is finished; until then there is nothing to download.
  ui.downloads.forEach((b) => { b.disabled = !shown.done || at === 0; });
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

/** "m:ss", or "h:mm:ss" from an hour on. */
function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/** Saves the shown task as `format` (txt, srt, vtt or json), rendered by the server. */
export async function download(format) {
  const { taskId, name } = shown;
  let body;
  try {
    const response = await fetchResult(taskId, RESPONSE_FORMAT[format]);
    if (response.status !== 200) throw new Error(await refusal(response));
    body = await response.blob();
  } catch (err) {
    return showAlert(`The transcript could not be downloaded: ${err.message}`);
  }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(body);
  a.download = `${name.replace(/\.[^.]*$/, "")}.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

/** Why the server did not send a transcript, from its error body. */
async function refusal(response) {
  if (response.status === 202) return "it is not finished yet";
  try {
    return (await response.json()).error?.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}
