// Live: microphone -> AudioWorklet (16 kHz PCM16, 100 ms frames) -> /v4/listen?ticket=...
//
// One capture session at a time, kept while the user browses other pages. The socket is
// reopened with a fresh ticket and exponential backoff when it drops; the server resumes the
// conversation. Stop closes with 1000.

import { ApiError, post } from "./api.js";
import { clock, h, speakerName } from "./dom.js";

/** Frames kept while the socket is down or backed up: 5 s. Beyond that the oldest are dropped. */
const MAX_QUEUED_FRAMES = 50;
/** Above this many unsent bytes in the socket, frames wait in the bounded queue instead. */
const MAX_BUFFERED_BYTES = 256 * 1024;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** Close codes that retrying cannot fix: unsupported, invalid data, auth/parameter, too big. */
const FINAL_CLOSE_CODES = new Set([1003, 1007, 1008, 1009]);
const MAX_EVENTS = 30;

const state = {
  phase: "idle", // idle | starting | connecting | live | reconnecting | stopped | error
  status: "",
  statusText: "",
  segments: new Map(),
  events: [],
  error: "",
  attempt: 0,
  retryInMs: 0,
  sentFrames: 0,
  droppedFrames: 0,
  conversationId: "",
  finishing: false,
  finished: null,
};

let session = null;
let view = null;

function changed() {
  if (view) view();
}

function logEvent(text) {
  state.events.unshift({ at: new Date(), text });
  state.events.length = Math.min(state.events.length, MAX_EVENTS);
}

function upsertSegments(segments) {
  for (const segment of segments) {
    if (segment && typeof segment.id === "string") state.segments.set(segment.id, segment);
  }
}

function onMessage(data) {
  if (typeof data !== "string" || data === "ping") return;
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return;
  }
  if (Array.isArray(message)) {
    upsertSegments(message);
  } else if (message && message.type === "service_status") {
    state.status = message.status;
    state.statusText = message.status_text || message.status;
    if (message.status === "ready" && session) {
      session.attempt = 0;
      state.attempt = 0;
      state.phase = "live";
    }
    logEvent(`service status: ${message.status}`);
  } else if (message && message.type === "segments_deleted") {
    for (const id of message.segment_ids || []) state.segments.delete(id);
  } else if (message && message.type === "memory_processing_started") {
    logEvent(`memory_processing_started: ${message.memory?.id ?? ""}`);
  } else if (message && message.type === "memory_created") {
    const memory = message.memory || {};
    state.conversationId = memory.id || state.conversationId;
    const title = memory.structured?.title;
    logEvent(`memory_created: ${title || memory.id || ""}`);
  } else if (message && message.type === "last_memory") {
    logEvent(`last_memory: ${message.memory_id}`);
  } else if (message && message.type === "app_message") {
    logEvent(`${message.name || "app"}: ${message.message}`);
  } else if (message && message.type) {
    logEvent(message.type);
  }
  changed();
}

function sendOrQueue(s, buffer) {
  const ws = s.ws;
  if (ws && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < MAX_BUFFERED_BYTES) {
    while (s.queue.length) ws.send(s.queue.shift());
    ws.send(buffer);
    state.sentFrames += 1;
    return;
  }
  s.queue.push(buffer);
  if (s.queue.length > MAX_QUEUED_FRAMES) {
    s.queue.shift();
    state.droppedFrames += 1;
  }
}

function scheduleRetry(s, why) {
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** s.attempt);
  const jittered = Math.round(delay * (0.8 + Math.random() * 0.4));
  s.attempt += 1;
  state.attempt = s.attempt;
  state.retryInMs = jittered;
  state.phase = "reconnecting";
  logEvent(`${why}; reconnecting in ${(jittered / 1000).toFixed(1)} s`);
  s.timer = setTimeout(() => connect(s), jittered);
  changed();
}

function onClose(s, ws, event) {
  if (s !== session || s.stopped || s.ws !== ws) return;
  s.ws = null;
  const why = `connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
  if (FINAL_CLOSE_CODES.has(event.code)) {
    session = null;
    stopCapture(s);
    state.phase = "error";
    state.error = why;
    changed();
    return;
  }
  scheduleRetry(s, why);
}

async function connect(s) {
  if (s !== session || s.stopped) return;
  state.phase = s.attempt ? "reconnecting" : "connecting";
  changed();
  let ticket;
  try {
    ({ ticket } = await post("/v1/listen/tickets"));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      stop();
      return;
    }
    if (s === session && !s.stopped) scheduleRetry(s, `ticket refused: ${err.message}`);
    return;
  }
  if (s !== session || s.stopped) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({
    codec: "pcm16",
    sample_rate: "16000",
    channels: "1",
    language: "en",
    ticket,
  });
  const ws = new WebSocket(`${scheme}//${location.host}/v4/listen?${query}`);
  ws.binaryType = "arraybuffer";
  s.ws = ws;
  ws.addEventListener("message", (event) => {
    if (s === session) onMessage(event.data);
  });
  ws.addEventListener("close", (event) => onClose(s, ws, event));
}

function stopCapture(s) {
  s.stopped = true;
  clearTimeout(s.timer);
  try {
    s.node.port.postMessage("stop");
    s.node.disconnect();
  } catch {
    // already gone
  }
  for (const track of s.stream.getTracks()) track.stop();
  s.context.close().catch(() => {});
}

async function start() {
  if (session) return;
  state.phase = "starting";
  state.error = "";
  state.segments = new Map();
  state.events = [];
  state.sentFrames = 0;
  state.droppedFrames = 0;
  state.finished = null;
  state.status = "";
  state.statusText = "";
  changed();
  if (!window.isSecureContext || !navigator.mediaDevices) {
    state.phase = "error";
    state.error = "The microphone needs a secure page: open the console over https or on localhost.";
    changed();
    return;
  }
  let stream = null;
  let context = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    context = new AudioContext();
    await context.audioWorklet.addModule("/console/capture-worklet.js");
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "pcm16-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    source.connect(node);
    node.connect(context.destination); // outputs silence; keeps the node pulled
    if (context.state === "suspended") await context.resume();
    const s = { stream, context, node, ws: null, queue: [], stopped: false, timer: null, attempt: 0 };
    node.port.onmessage = (event) => {
      if (!s.stopped) sendOrQueue(s, event.data);
    };
    session = s;
    logEvent(`microphone at ${context.sampleRate} Hz, sending 16 kHz PCM16`);
    connect(s);
  } catch (err) {
    if (stream) for (const track of stream.getTracks()) track.stop();
    if (context) context.close().catch(() => {});
    state.phase = "error";
    state.error = err && err.name === "NotAllowedError" ? "Microphone access was refused." : `Could not start: ${err.message}`;
    changed();
  }
}

/** Stop capturing and close the socket with 1000. */
export function stop() {
  const s = session;
  if (!s) return;
  session = null;
  stopCapture(s);
  if (s.ws && (s.ws.readyState === WebSocket.OPEN || s.ws.readyState === WebSocket.CONNECTING)) {
    s.ws.close(1000, "client stopped");
  }
  state.phase = "stopped";
  logEvent("stopped; the conversation is summarised after its silence timeout, or on Finish");
  changed();
}

/** End the in-progress conversation now and summarise it (Omi's POST /v1/conversations). A
 * live session goes on with a new conversation; its socket gets the processing events. */
async function finish() {
  state.finishing = true;
  state.error = "";
  state.finished = null;
  changed();
  try {
    const { memory } = await post("/v1/conversations");
    state.finished = memory;
    logEvent(memory ? `finished: ${memory.structured?.title || memory.id} (${memory.status})` : "finished: nothing was said");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) state.error = err.message;
  } finally {
    state.finishing = false;
    changed();
  }
}

/** Stop a running session (used on sign-out). */
export function stopIfRunning() {
  if (session) stop();
}

const PHASE_TEXT = {
  idle: "Not recording",
  starting: "Asking for the microphone…",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  stopped: "Stopped",
  error: "Stopped with an error",
};

function segmentItem() {
  const speaker = h("span", { class: "speaker" });
  const time = h("span", { class: "time" });
  const text = h("span", { class: "text" });
  return { li: h("li", { class: "segment" }, h("span", { class: "meta" }, speaker, time), text), speaker, time, text };
}

/** Render the Live page; returns the function that detaches it (capture keeps running). */
export function render(container) {
  const startButton = h("button", { type: "button", id: "live-start", onclick: start, text: "Start" });
  const stopButton = h("button", { type: "button", id: "live-stop", class: "danger", onclick: stop, text: "Stop" });
  const finishButton = h("button", { type: "button", id: "live-finish", class: "quiet", onclick: finish, text: "Finish conversation" });
  const finished = h("p", { id: "live-finished", role: "status" });
  const phase = h("span", { id: "live-phase", class: "pill", role: "status" });
  const status = h("span", { id: "live-status", class: "muted" });
  const counters = h("span", { id: "live-counters", class: "muted" });
  const problem = h("p", { id: "live-error", class: "error", role: "alert" });
  const list = h("ol", { id: "transcript", class: "transcript", "aria-live": "polite", "aria-label": "Live transcript" });
  const empty = h("p", { class: "muted", id: "transcript-empty", text: "Press Start and speak: the transcript appears here." });
  const events = h("ul", { id: "live-events", class: "events" });
  const items = new Map();

  const update = () => {
    const running = session !== null;
    startButton.disabled = running;
    stopButton.disabled = !running;
    phase.textContent = PHASE_TEXT[state.phase] || state.phase;
    phase.dataset.phase = state.phase;
    status.textContent = state.statusText ? `STT: ${state.statusText}` : "";
    if (state.phase === "reconnecting") status.textContent = `attempt ${state.attempt}`;
    counters.textContent = state.sentFrames ? `${(state.sentFrames / 10).toFixed(1)} s sent` +
      (state.droppedFrames ? `, ${(state.droppedFrames / 10).toFixed(1)} s dropped while offline` : "") : "";
    finishButton.disabled = state.finishing;
    finishButton.textContent = state.finishing ? "Summarising…" : "Finish conversation";
    const memory = state.finished;
    finished.replaceChildren(...(memory ? [
      "Summarised: ",
      h("a", { href: `#/conversations/${encodeURIComponent(memory.id)}`, text: memory.structured?.title || "open the conversation" }),
      ` (${memory.status})`,
    ] : []));
    finished.hidden = !memory;
    problem.textContent = state.error;
    problem.hidden = !state.error;
    const ordered = [...state.segments.values()].sort((a, b) => (a.start ?? 0) - (b.start ?? 0));
    for (const [id, item] of items) {
      if (!state.segments.has(id)) {
        item.li.remove();
        items.delete(id);
      }
    }
    for (const segment of ordered) {
      let item = items.get(segment.id);
      if (!item) {
        item = segmentItem();
        item.li.dataset.id = segment.id;
        items.set(segment.id, item);
      }
      item.speaker.textContent = speakerName(segment);
      item.time.textContent = clock(segment.start);
      item.text.textContent = segment.text;
      list.append(item.li); // appending an existing node moves it: keeps start order
    }
    empty.hidden = ordered.length > 0;
    events.replaceChildren(
      ...state.events.map((e) => h("li", {}, h("time", { datetime: e.at.toISOString(), text: e.at.toLocaleTimeString() }), " ", e.text)),
    );
  };

  container.append(
    h("h2", { text: "Live" }),
    h("div", { class: "row toolbar" }, startButton, stopButton, finishButton, phase, status, counters),
    problem,
    finished,
    h("section", { "aria-labelledby": "transcript-title" }, h("h3", { id: "transcript-title", text: "Transcript" }), empty, list),
    h("section", { "aria-labelledby": "events-title" }, h("h3", { id: "events-title", text: "Events" }), events),
  );
  view = update;
  update();
  return () => {
    if (view === update) view = null;
  };
}
