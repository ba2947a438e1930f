// Transcript downloads rendered in the browser from the segments the server sent, in the same
// shapes as the server's own renderer (src/format.rs): TXT, SRT, VTT and JSON.

/** The whole text: segment texts trimmed and joined by spaces. */
export function plainText(segments) {
  return segments.map((s) => s.text.trim()).filter(Boolean).join(" ");
}

/** `HH:MM:SS<sep>mmm`; negative or non-finite times become zero. */
export function timestamp(seconds, separator) {
  const ms = Number.isFinite(seconds) && seconds > 0 ? Math.round(seconds * 1000) : 0;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const h = Math.floor(ms / 3600000);
  const m = Math.floor((ms % 3600000) / 60000);
  const s = Math.floor((ms % 60000) / 1000);
  return `${pad(h)}:${pad(m)}:${pad(s)}${separator}${pad(ms % 1000, 3)}`;
}

// A cue's text on one line: a blank line would end the cue.
const cueText = (text) => text.split(/\s+/).filter(Boolean).join(" ");
const cues = (segments) => segments.filter((s) => s.text.trim() !== "");

/** Renders `{segments, language, duration}` as "txt", "srt", "vtt" or "json". */
export function render(transcript, format) {
  const segments = transcript.segments;
  switch (format) {
    case "txt": {
      const text = plainText(segments);
      return text ? text + "\n" : "";
    }
    case "srt":
      return cues(segments)
        .map((s, i) => `${i + 1}\n${timestamp(s.start, ",")} --> ${timestamp(s.end, ",")}\n${cueText(s.text)}\n\n`)
        .join("");
    case "vtt":
      return "WEBVTT\n\n" + cues(segments)
        .map((s) => `${timestamp(s.start, ".")} --> ${timestamp(s.end, ".")}\n${cueText(s.text).replaceAll("-->", "->")}\n\n`)
        .join("");
    case "json":
      return JSON.stringify({
        text: plainText(segments),
        language: transcript.language ?? null,
        duration: transcript.duration ?? null,
        segments: segments.map((s, id) => ({ id, start: s.start, end: s.end, text: s.text })),
      }, null, 2) + "\n";
    default:
      throw new Error(`unknown format ${format}`);
  }
}

/** MIME type of a download. */
export const MIME = {
  txt: "text/plain;charset=utf-8",
  srt: "application/x-subrip;charset=utf-8",
  vtt: "text/vtt;charset=utf-8",
  json: "application/json;charset=utf-8",
};
