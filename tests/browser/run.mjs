// Drives the Earshot page in Debian's headless Chromium (never a downloaded browser) for
// tests/browser.rs, and prints one line `RESULT {json}` with what the page showed.
//
//   node run.mjs URL SCENARIO [key=value …]
//
// Scenarios:
//   mic     wav=PATH [seconds=12.5] [screenshot=PNG]   fake microphone fed from a WAV file
//   upload  file=PATH [screenshot=PNG]                 file chosen through the file picker
//   resume  file=PATH drop_after=BYTES [chunk_size=N] [screenshot=PNG]
//           the page goes through a TCP proxy that cuts its first WebSocket once after
//           BYTES bytes from the browser and refuses WebSockets for 3 s (screenshot taken
//           then; the finished page goes to *-done.png); the upload must resume and finish
//   reload  file=PATH drop_after=BYTES [chunk_size=N] [screenshot=PNG]
//           as resume, but the page is reloaded while the network is down and the same file
//           is chosen again
//   pause   file=PATH [rate=BYTES_PER_S] [chunk_size=N] [screenshot=PNG]
//           the file is dropped on the drop zone (a real drop event carrying the file), the
//           page's traffic goes through a proxy throttled to `rate`; Pause is clicked once
//           some chunks are sent, nothing may be sent while paused, then Resume finishes it
//   micresume wav=PATH drop_after=BYTES [seconds=12.5] [screenshot=PNG]
//           the fake microphone through the proxy of `resume`: the live stream's WebSocket is
//           cut once after BYTES bytes from the browser and WebSockets are refused for 3 s; the
//           page must resume the same stream. RESULT adds every `stream_started` it received
//   models                                             each served model chosen in turn:
//           RESULT has `models`, per model the languages the page still offers and whether it
//           shows the English-only hint
//   hashes                                             checks web/hash.js in Node
//
// Every browser scenario's RESULT has `taskId`: the last task the server named to the page
// (`upload_ready` / `stream_started`, read off the WebSocket), so the test can ask the server
// for the same task.
//
// The browser's console and errors go to stderr, so a failing test shows them.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const [url, scenario, ...rest] = process.argv.slice(2);
const opts = Object.fromEntries(rest.map((kv) => {
  const at = kv.indexOf("=");
  return [kv.slice(0, at), kv.slice(at + 1)];
}));
/** Longest the page may take to show a finished transcript (a hang guard, not a speed test). */
const DONE_TIMEOUT_MS = Number(opts.timeout_ms ?? 300000);

if (!url || !scenario) {
  console.error("usage: node run.mjs URL SCENARIO [key=value …]");
  process.exit(2);
}

function result(data) {
  console.log("RESULT " + JSON.stringify(data));
}

async function launch(extraArgs = []) {
  // Imported here so the Node-only scenario needs no browser package.
  const { chromium } = await import("playwright-core");
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), "earshot-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1100, height: 820 },
    acceptDownloads: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
      ...extraArgs,
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => console.error(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console.error(`[page error] ${e.message}`));
  const tasks = [];
  const started = [];
  page.on("websocket", (ws) => ws.on("framereceived", ({ payload }) => {
    if (typeof payload !== "string") return;
    const msg = JSON.parse(payload);
    if (msg.type === "upload_ready" || msg.type === "stream_started") tasks.push(msg.data.task_id);
    if (msg.type === "stream_started") started.push(msg.data);
  }));
  const close = async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, page, close, taskId: () => tasks.at(-1) ?? null, started };
}

async function waitConnected(page) {
  await page.waitForFunction(() => document.getElementById("conn").textContent.startsWith("Connected"), null, { timeout: 60000 });
}

async function waitDone(page) {
  await page.waitForFunction(() => document.getElementById("transcript-state").textContent.startsWith("Done"), null, { timeout: DONE_TIMEOUT_MS, polling: 250 });
}

/** What the page shows: the transcript's text and state, the alert, the counters. */
async function pageState(page) {
  return page.evaluate(() => ({
    text: [...document.querySelectorAll("#transcript li:not(.partial) span")].map((s) => s.textContent).join(" "),
    state: document.getElementById("transcript-state").textContent,
    alert: document.getElementById("alert").hidden ? "" : document.getElementById("alert").textContent,
    upload: document.getElementById("upload-stats").textContent,
    stats: window.earshotStats,
    saved: localStorage.getItem("earshot.upload"),
  }));
}

/** Clicks a download button and returns the file's text. */
async function downloadText(page, format) {
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.click(`.downloads button[data-format="${format}"]`),
  ]);
  const file = await download.path();
  return { name: download.suggestedFilename(), body: readFileSync(file, "utf8") };
}

/** Chromium flags that make a WAV file the microphone (played once, from when it opens). */
const fakeMicrophone = (wav) => [
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  `--use-file-for-fake-audio-capture=${wav}%noloop`,
];

async function micScenario() {
  const { page, close, taskId } = await launch(fakeMicrophone(opts.wav));
  try {
    await page.goto(url);
    await waitConnected(page);
    await page.click("#mic");
    const partials = [];
    // Record each partial the page shows, to prove text appears before the stream ends.
    await page.exposeFunction("notePartial", (t) => partials.push(t));
    await page.evaluate(() => {
      new MutationObserver(() => {
        const p = document.querySelector("#transcript li.partial span");
        if (p) window.notePartial(p.textContent);
      }).observe(document.getElementById("transcript"), { childList: true, subtree: true });
    });
    await page.waitForTimeout(Number(opts.seconds ?? 12.5) * 1000);
    const duringStream = await pageState(page);
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot.replace(/\.png$/, "-live.png") });
    await page.click("#mic");
    await waitDone(page);
    const state = await pageState(page);
    console.error("page after the stream:", JSON.stringify(state));
    const txt = state.text ? await downloadText(page, "txt") : null;
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
    result({ ...state, partials: partials.length, textDuringStream: duringStream.text, txt, taskId: taskId() });
  } finally {
    await close();
  }
}

/**
 * The fake microphone streams through a proxy that cuts the live WebSocket part way and keeps
 * WebSockets down for 3 s: the page must reconnect and resume the same stream.
 */
async function micResumeScenario() {
  const proxy = await startProxy(new URL(url), Number(opts.drop_after), 3000);
  const { page, close, taskId, started } = await launch(fakeMicrophone(opts.wav));
  try {
    await page.goto(`http://127.0.0.1:${proxy.port}/`);
    await waitConnected(page);
    await page.click("#mic");
    const micOpened = Date.now();
    await page.waitForFunction(() => document.getElementById("transcript-state").textContent.startsWith("Connection lost"), null, { timeout: 60000 });
    const duringCut = await pageState(page);
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
    await page.waitForFunction(() => window.earshotStats.streamResumes >= 1, null, { timeout: 60000 });
    const resumed = await pageState(page);
    const left = Number(opts.seconds ?? 12.5) * 1000 - (Date.now() - micOpened);
    if (left > 0) await page.waitForTimeout(left);
    await page.click("#mic");
    await waitDone(page);
    const state = await pageState(page);
    console.error("page after the resumed stream:", JSON.stringify(state));
    const txt = state.text ? await downloadText(page, "txt") : null;
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot.replace(/\.png$/, "-done.png"), fullPage: true });
    result({ ...state, duringCut, resumed, started, txt, proxy: proxy.report, taskId: taskId() });
  } finally {
    await close();
    proxy.server.close();
  }
}

async function uploadScenario(pageUrl = url, after = async () => {}, shot = opts.screenshot) {
  const { page, close, taskId } = await launch();
  try {
    await page.goto(pageUrl);
    await waitConnected(page);
    await page.setInputFiles("#file", opts.file);
    await after(page);
    await waitDone(page);
    const state = await pageState(page);
    console.error("page after the upload:", JSON.stringify(state));
    const downloads = {};
    if (state.text) {
      for (const format of ["txt", "srt", "vtt", "json"]) downloads[format] = await downloadText(page, format);
    }
    if (shot) await page.screenshot({ path: shot, fullPage: true });
    return { ...state, downloads, taskId: taskId() };
  } finally {
    await close();
  }
}

/**
 * A TCP proxy in front of the server. The first WebSocket connection through it is cut
 * (both sides destroyed, as a network failure) once the browser has sent `dropAfter` bytes
 * on it; everything else passes untouched.
 */
function startProxy(target, dropAfter, holdMs, rate = 0) {
  const report = { websockets: 0, cut: false, bytesBeforeCut: 0, refused: 0 };
  let cutAt = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.hostname);
    let isFirstWs = false;
    let sent = 0;
    let first = true;
    client.on("data", (chunk) => {
      if (first) {
        first = false;
        if (/^upgrade:\s*websocket/im.test(chunk.toString("latin1"))) {
          if (report.cut && Date.now() - cutAt < holdMs) {
            // WebSockets stay down a moment (plain HTTP still works, so the page can reload).
            report.refused++;
            client.resetAndDestroy();
            upstream.destroy();
            return;
          }
          report.websockets++;
          isFirstWs = report.websockets === 1;
        }
      }
      if (isFirstWs && !report.cut) {
        sent += chunk.length;
        if (sent > dropAfter) {
          report.cut = true;
          cutAt = Date.now();
          report.bytesBeforeCut = sent;
          client.resetAndDestroy();
          upstream.destroy();
          return;
        }
      }
      upstream.write(chunk);
      if (rate > 0) {
        // Throttle what the browser sends: stop reading for as long as `rate` allows.
        client.pause();
        setTimeout(() => client.resume(), (chunk.length / rate) * 1000);
      }
    });
    upstream.on("data", (chunk) => client.write(chunk));
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ server, report, port: server.address().port }));
  });
}

async function resumeScenario() {
  const target = new URL(url);
  const proxy = await startProxy(target, Number(opts.drop_after), 3000);
  const chunk = opts.chunk_size ?? "65536";
  const pageUrl = `http://127.0.0.1:${proxy.port}/?chunk_size=${chunk}`;
  let duringCut = null;
  const whileCut = async (page) => {
    await page.waitForFunction(() => document.getElementById("upload-stats").textContent.startsWith("Connection lost"), null, { timeout: 60000 });
    duringCut = await pageState(page);
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
  };
  const finalShot = opts.screenshot?.replace(/\.png$/, "-done.png");
  try {
    const state = await uploadScenario(pageUrl, whileCut, finalShot);
    state.duringCut = duringCut;
    result({ ...state, proxy: proxy.report, chunkSize: Number(chunk) });
  } finally {
    proxy.server.close();
  }
}

/**
 * The connection is cut mid-upload and the page is reloaded; the user picks the same file
 * again and the page must resume the stored upload, sending only what the server lacks.
 */
async function reloadScenario() {
  const target = new URL(url);
  const proxy = await startProxy(target, Number(opts.drop_after), 4000);
  const chunk = opts.chunk_size ?? "32768";
  const pageUrl = `http://127.0.0.1:${proxy.port}/?chunk_size=${chunk}`;
  const { page, close, taskId } = await launch();
  try {
    await page.goto(pageUrl);
    await waitConnected(page);
    await page.setInputFiles("#file", opts.file);
    await page.waitForFunction(() => document.getElementById("upload-stats").textContent.startsWith("Connection lost"), null, { timeout: 60000 });
    const before = await pageState(page);
    await page.reload();
    await page.waitForFunction(() => !document.getElementById("resume").hidden, null, { timeout: 30000 });
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
    const banner = await page.evaluate(() => document.getElementById("resume").textContent.replace(/\s+/g, " ").trim());
    await page.setInputFiles("#file", opts.file);
    await waitDone(page);
    const state = await pageState(page);
    console.error("page after the reload:", JSON.stringify(state));
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot.replace(/\.png$/, "-done.png"), fullPage: true });
    result({ ...state, before, banner, proxy: proxy.report, taskId: taskId() });
  } finally {
    await close();
    proxy.server.close();
  }
}

/** Drops `file` on the page's drop zone, as a user dragging it from the desktop would. */
async function dropFile(page, file) {
  const dataTransfer = await page.evaluateHandle(({ b64, name }) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], name));
    return dt;
  }, { b64: readFileSync(file).toString("base64"), name: path.basename(file) });
  for (const type of ["dragenter", "dragover", "drop"]) {
    await page.dispatchEvent("#drop", type, { dataTransfer });
  }
}

async function pauseScenario() {
  const target = new URL(url);
  const proxy = await startProxy(target, Infinity, 0, Number(opts.rate ?? 200000));
  const chunk = opts.chunk_size ?? "16384";
  const { page, close, taskId } = await launch();
  const sent = () => page.evaluate(() => window.earshotStats.chunksSent);
  const progress = () => page.evaluate(() => document.getElementById("upload-progress").value);
  try {
    await page.goto(`http://127.0.0.1:${proxy.port}/?chunk_size=${chunk}`);
    await waitConnected(page);
    await dropFile(page, opts.file);
    await page.waitForFunction(() => window.earshotStats.chunksSent >= 8, null, { timeout: 60000 });
    await page.click("#pause");
    const label = await page.evaluate(() => document.getElementById("pause").textContent);
    // Chunks already in flight are still acknowledged; wait until the bar stops moving.
    for (let last = -1, still = 0; still < 4; ) {
      await page.waitForTimeout(250);
      const now = await progress();
      still = now === last ? still + 1 : 0;
      last = now;
    }
    const paused = { sent: await sent(), progress: await progress() };
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
    await page.waitForTimeout(2500);
    const later = { sent: await sent(), progress: await progress(), upload: await page.evaluate(() => document.getElementById("upload-stats").textContent) };
    await page.click("#pause");
    const resumedLabel = await page.evaluate(() => document.getElementById("pause").textContent);
    await waitDone(page);
    const state = await pageState(page);
    console.error("page after the paused upload:", JSON.stringify(state));
    result({ ...state, label, resumedLabel, paused, later, taskId: taskId() });
  } finally {
    await close();
    proxy.server.close();
  }
}

async function hashesScenario() {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const web = path.join(here, "../../web");
  const { Md5, crc32 } = await import(path.join(web, "hash.js"));
  const failures = [];
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 65537, 1 << 20]) {
    const bytes = randomBytes(n);
    const md5 = new Md5();
    for (let at = 0; at < n; at += 777) md5.update(bytes.subarray(at, at + 777));
    const want = createHash("md5").update(bytes).digest("hex");
    const got = md5.hex();
    if (got !== want) failures.push(`md5 of ${n} bytes: ${got} != ${want}`);
  }
  // CRC-32/ISO-HDLC check values.
  const crcCases = [["", 0], ["123456789", 0xcbf43926], ["The quick brown fox jumps over the lazy dog", 0x414fa339]];
  for (const [text, want] of crcCases) {
    const got = crc32(new TextEncoder().encode(text));
    if (got !== want) failures.push(`crc32(${JSON.stringify(text)}) = ${got.toString(16)}`);
  }
  result({ failures });
}

/** Chooses each model in the page's list and reads which languages it then offers. */
async function modelsScenario() {
  const { page, close } = await launch();
  try {
    await page.goto(url);
    await waitConnected(page);
    const names = await page.$$eval("#model option", (os) => os.map((o) => o.value));
    const models = [];
    for (const name of names) {
      await page.selectOption("#model", name);
      models.push(await page.evaluate((name) => ({
        name,
        languages: [...document.querySelectorAll("#language option")].filter((o) => !o.disabled).map((o) => o.value),
        chosen: document.getElementById("language").value,
        hint: !document.getElementById("language-hint").hidden,
      }), name));
    }
    result({ models });
  } finally {
    await close();
  }
}

const scenarios = {
  models: modelsScenario,
  mic: micScenario,
  micresume: micResumeScenario,
  upload: async () => result(await uploadScenario()),
  resume: resumeScenario,
  reload: reloadScenario,
  pause: pauseScenario,
  hashes: hashesScenario,
};
if (!scenarios[scenario]) {
  console.error(`unknown scenario ${scenario}`);
  process.exit(2);
}
try {
  await scenarios[scenario]();
} catch (err) {
  console.error(err);
  process.exit(1);
}
