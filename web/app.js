// The Earshot page: live microphone transcription and resumable uploads over one WebSocket,
// speaking the protocol in docs/PROTOCOL.md. No framework, no build step. This module wires
// the parts together:
//
//   connection.js  the WebSocket, its binary frames, the task endpoint for downloads
//   upload.js      resumable uploads (one explicit state)
//   live.js        the microphone stream
//   transcript.js  the text on screen and its downloads (rendered by the server)
//   ui.js          the page's elements, alerts, sizes and durations
//
// Imports go one way: ui.js ← connection.js ← transcript.js ← upload.js, live.js ← app.js
// (upload.js and live.js point the transcript at their task; neither knows the other). Each
// server message is routed here to the parts it concerns. This module must not keep state of
// its own, or act on a message beyond choosing which parts hear it.

import * as connection from "./connection.js";
import * as live from "./live.js";
import * as transcript from "./transcript.js";
import * as upload from "./upload.js";
import { ui, showAlert, hideAlert } from "./ui.js";

window.earshotStats = connection.stats;

function handle(type, d) {
  switch (type) {
    case "connected": return onConnected();
    case "upload_ready": return upload.onReady(d);
    case "chunk_ack": return upload.onAck(d);
    case "upload_complete": return upload.onUploaded(d);
    case "transcription_progress": return transcript.onProgress(d);
    case "transcript_segment": return transcript.onSegment(d);
    case "transcript_partial": return transcript.onPartial(d);
    case "transcription_complete":
      upload.onTranscribed(d); // first: it may point the transcript at a task finished while away
      transcript.onComplete(d);
      return live.onComplete(d);
    case "stream_started": return live.onStarted(d);
    case "stream_lag": return live.onLag(d);
    case "error": return onError(d);
    case "server_shutdown": return showAlert("The server is restarting; the page reconnects by itself.");
    default: return undefined;
  }
}

function onConnected() {
  const chosen = ui.model.value;
  ui.model.replaceChildren(...connection.models().map((name, i) =>
    new Option(i === 0 ? `${name} (default)` : name, name)));
  if (connection.models().includes(chosen)) ui.model.value = chosen;
  followModel();
  live.onConnected();
  hideAlert();
  upload.onConnected();
}

/** The language list follows the chosen model: an English-only one (`*.en`) offers only English. */
function followModel() {
  const base = ui.model.value.split(/[-_]/)[0];
  const englishOnly = base.endsWith(".en");
  ui.languageHint.hidden = !englishOnly;
  for (const option of ui.language.options) option.disabled = englishOnly && option.value !== "en";
  if (englishOnly) ui.language.value = "en";
}

ui.model.addEventListener("change", followModel);

function onLost() {
  live.onLost();
  upload.onLost();
}

function onError(d) {
  if (d.code === "busy") {
    const wait = d.retry_after_ms ?? 2000;
    showAlert(`The server is busy (${d.message}). Retrying in ${Math.ceil(wait / 1000)} s…`);
    if (!upload.onBusy(wait)) live.onRefused();
    return;
  }
  if (upload.absorb(d) || live.absorb(d)) return;
  const mine = upload.owns(d.task_id) || live.owns(d.task_id);
  if (d.code === "session_not_found" && d.task_id && !mine) return;
  if (d.code === "not_ready") return;
  showAlert(d.message || d.code);
  live.onRefused();
  upload.onFailure(d);
}

ui.mic.addEventListener("click", () => (live.active() ? live.stop() : live.start()));
ui.file.addEventListener("change", () => { upload.choose(ui.file.files[0]); ui.file.value = ""; });
ui.pause.addEventListener("click", upload.togglePause);
ui.forget.addEventListener("click", upload.forget);
ui.downloads.forEach((b) => b.addEventListener("click", () => transcript.download(b.dataset.format)));
for (const name of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(name, (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  ui.drop.addEventListener(name, () => ui.drop.classList.remove("over"));
}
ui.drop.addEventListener("drop", (e) => { e.preventDefault(); upload.choose(e.dataTransfer.files[0]); });
// A file dropped anywhere else must not make the browser navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

upload.offerSaved();
connection.connect(handle, onLost);
