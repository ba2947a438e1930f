// The page's elements (the ids in index.html, in one place) and the few things every part of
// the page shows the same way: the alert, the status line beside the transcript's title, and
// sizes and durations in words.
//
// This module must not talk to the server or keep any state of an upload, a stream or the
// transcript; the other modules import it, and it imports none of them.

const $ = (id) => document.getElementById(id);

/** The page's elements. */
export const ui = {
  conn: $("conn"), language: $("language"), languageHint: $("language-hint"), model: $("model"),
  mic: $("mic"), micLabel: $("mic-label"), drop: $("drop"), file: $("file"),
  resume: $("resume"), resumeName: $("resume-name"), forget: $("forget"),
  upload: $("upload"), uploadName: $("upload-name"), pause: $("pause"),
  progress: $("upload-progress"), stats: $("upload-stats"),
  alert: $("alert"), lag: $("lag"),
  transcript: $("transcript"), empty: $("empty"), status: $("transcript-state"),
  downloads: document.querySelectorAll(".downloads button"),
};

export function showAlert(text) {
  ui.alert.textContent = text;
  ui.alert.hidden = false;
}

export function hideAlert() {
  ui.alert.hidden = true;
}

/** The line beside the transcript's title: "Listening…", "Transcribing… 40%", "Done · …". */
export function showStatus(text) {
  ui.status.textContent = text;
}

/** "42 s", "3 min 5 s", "1 h 2 min"; "?" for a time not known. */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

/** "950 B", "1.5 MB", "12 GB" (powers of 1000, as file managers show them). */
export function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}
