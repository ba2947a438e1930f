// The transcript on screen: one task's finished segments plus the live partial tail, its
// progress and "Done" line, and the downloads (rendered by formats.js).
//
// This module must not send protocol messages, or care whether the text comes from the
// microphone or an upload.

import { render, MIME } from "./formats.js";
import { ui, showStatus, formatDuration } from "./ui.js";

/**
 * What is shown: the task, the name downloads are saved under, its segments by index, the
 * partial (live only) with the revision it came in, and whether the server has finished it.
 */
let shown = blank(null, "transcript");

function blank(taskId, name) {
  return { taskId, name, segments: [], partial: "", revision: -1, language: null, duration: null, done: false };
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
  shown.language = d.language;
  shown.duration = d.duration;
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

/** "m:ss", or "h:mm:ss" from an hour on. */
function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/** Saves the text shown as `format` (txt, srt, vtt or json). */
export function download(format) {
  const segments = shown.segments.filter(Boolean);
  const body = render({ segments, language: shown.language, duration: shown.duration }, format);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([body], { type: MIME[format] }));
  a.download = `${shown.name.replace(/\.[^.]*$/, "")}.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
