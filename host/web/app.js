// The page of `nodehost serve`: microphone → session input, session outputs → speakers and
// text, session events → the node table. Protocol: docs/serve.md.
import { audioFrame, parseFrame } from "./wire.js";

const CHUNK_MS = 20;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const ui = {
  start: $("start"), talk: $("talk"), end: $("end"), handsfree: $("handsfree"),
  level: $("level"), state: $("state"), outputs: $("outputs"), log: $("log"),
  nodes: $("nodes").querySelector("tbody"),
};
const counters = { sentChunks: 0, sentSeconds: 0, audioChunks: 0, audioSeconds: 0, texts: 0 };
let ws = null;
let ctx = null;
let input = null;        // the session input the microphone feeds
let ready = false;
let inputClosed = false;
let talking = false;
let playhead = 0;
let seq = 0;
window.nodehost = { counters, session: null };  // for tests and the console

function setState(state, text) {
  document.body.dataset.state = state;
  ui.state.textContent = text;
}

function show() {
  $("sent-chunks").textContent = counters.sentChunks;
  $("sent-seconds").textContent = counters.sentSeconds.toFixed(1);
  $("audio-chunks").textContent = counters.audioChunks;
  $("audio-seconds").textContent = counters.audioSeconds.toFixed(1);
  $("text-count").textContent = counters.texts;
}

function logLine(text) {
  const li = document.createElement("li");
  li.textContent = text;
  ui.log.append(li);
  while (ui.log.children.length > 200) ui.log.firstChild.remove();
  ui.log.scrollTop = ui.log.scrollHeight;
}

function nodeRow(node) {
  let row = ui.nodes.querySelector(`tr[data-node="${CSS.escape(node)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.node = node;
    row.innerHTML = "<td></td><td></td><td></td><td></td><td></td>";
    row.cells[0].textContent = node;
    ui.nodes.append(row);
  }
  return row;
}

function outputBox(name) {
  let box = $(`out-${name}`);
  if (!box) {
    const section = document.createElement("div");
    section.className = "output";
    section.innerHTML = "<h3></h3>";
    section.firstChild.textContent = name;
    box = document.createElement("div");
    box.id = `out-${name}`;
    section.append(box);
    ui.outputs.append(section);
  }
  return box;
}

function onEvent(event) {
  switch (event.event) {
    case "ready": {
      ready = true;
      window.nodehost.session = event.session;
      $("pipeline").textContent = event.pipeline;
      const audioInputs = Object.keys(event.inputs).filter(
        (name) => event.inputs[name].data_type === "audio");
      input = audioInputs.includes("mic") ? "mic" : audioInputs[0] || null;
      for (const [name, spec] of Object.entries(event.outputs)) {
        if (spec.data_type === "text") outputBox(name);
      }
      setState("ready", input
        ? `Ready after ${event.connect_to_ready_s.toFixed(2)} s: ${talking ? "listening" : "hold to talk"}.`
        : "Ready (this pipeline has no audio input).");
      ui.talk.disabled = !input;
      ui.end.disabled = !input;
      break;
    }
    case "status": {
      const row = nodeRow(event.node);
      row.cells[1].textContent = event.node_type;
      row.cells[2].textContent = event.status + (event.error ? `: ${event.error}` : "");
      row.cells[2].className = `status-${event.status.toLowerCase()}`;
      if (event.memory_usage) row.cells[4].textContent = `${(event.memory_usage / 2 ** 20).toFixed(0)} MiB`;
      break;
    }
    case "progress": {
      const row = nodeRow(event.node);
      const pct = event.fraction == null ? "" : `${Math.round(event.fraction * 100)}% `;
      row.cells[3].textContent = pct + (event.message || "");
      break;
    }
    case "log":
      logLine(`${event.node}: ${event.message}`);
      break;
    case "refused":
      setState("refused", `Refused: ${event.reason}`);
      break;
    case "error":
      setState("error", `Error: ${event.error}`);
      break;
    case "session_end":
      setState(event.ok ? "ended" : "failed",
        event.ok ? "Session ended." : `Session failed: ${event.reason}`);
      ready = false;
      ui.talk.disabled = ui.end.disabled = true;
      break;
    default:
      break;
  }
}

function onOutput(frame) {
  if (frame.dataType === "audio") {
    play(frame);
    counters.audioChunks += 1;
    counters.audioSeconds += frame.frames / frame.sampleRate;
  } else if (frame.dataType === "text") {
    const p = document.createElement("p");
    p.textContent = frame.text;
    outputBox(frame.name).append(p);
    counters.texts += 1;
  }
  show();
}

function play(frame) {
  const { channels, frames, sampleRate, samples } = frame;
  if (!frames) return;
  const buffer = ctx.createBuffer(channels, frames, sampleRate);
  for (let c = 0; c < channels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < frames; i++) data[i] = samples[i * channels + c];
  }
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  playhead = Math.max(playhead, ctx.currentTime + 0.05);
  source.start(playhead);
  playhead += buffer.duration;
}

function onChunk(samples) {
  let peak = 0;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  ui.level.value = talking ? peak : 0;
  if (!ready || !input || inputClosed || ws.readyState !== WebSocket.OPEN) return;
  // Not talking: silence keeps the stream (and the VAD's clock) going, so an utterance ends.
  if (!talking) samples.fill(0);
  seq += 1;
  ws.send(audioFrame(input, samples, ctx.sampleRate, 1, seq));
  counters.sentChunks += 1;
  counters.sentSeconds += samples.length / ctx.sampleRate;
  if (counters.sentChunks % 10 === 0) show();
}

function setTalking(on) {
  talking = on;
  ui.talk.classList.toggle("active", on);
  ui.talk.textContent = on ? "Listening…" : "Hold to talk";
}

// A browser that wants a click before it plays or records audio never settles resume()
// (autostart without --autoplay-policy=no-user-gesture-required): ask for the click instead.
function resumed(context, ms = 1500) {
  return Promise.race([
    context.resume().then(() => true),
    new Promise((done) => setTimeout(() => done(context.state === "running"), ms)),
  ]);
}

async function start() {
  ui.start.disabled = true;
  setState("connecting", "Starting the microphone…");
  try {
    ctx = new AudioContext();
    if (!(await resumed(ctx))) {
      ctx.close();
      ctx = null;
      setState("idle", "This browser starts audio only after a click: press Start.");
      ui.start.disabled = false;
      return;
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    await ctx.audioWorklet.addModule("/static/capture-worklet.js");
    const mic = ctx.createMediaStreamSource(stream);
    const capture = new AudioWorkletNode(ctx, "nodehost-capture", {
      processorOptions: { chunkFrames: Math.round(ctx.sampleRate * CHUNK_MS / 1000) },
    });
    capture.port.onmessage = (message) => onChunk(message.data);
    mic.connect(capture);
  } catch (error) {
    setState("error", `Microphone unavailable: ${error.message}`);
    ui.start.disabled = false;
    return;
  }
  connect();
}

function connect() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (params.get("token")) url.searchParams.set("token", params.get("token"));
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  setState("connecting", "Starting a session…");
  ws.onmessage = (message) => {
    if (typeof message.data === "string") onEvent(JSON.parse(message.data));
    else {
      try {
        onOutput(parseFrame(message.data));
      } catch (error) {
        logLine(`bad frame from the server: ${error.message}`);
      }
    }
  };
  ws.onclose = (close) => {
    ready = false;
    ui.talk.disabled = ui.end.disabled = true;
    ui.start.disabled = false;
    ui.start.textContent = "Start again";
    if (!["ended", "failed", "refused", "error"].includes(document.body.dataset.state)) {
      setState("error", `Connection closed (${close.code}${close.reason ? `: ${close.reason}` : ""}).`);
    }
  };
}

function restart() {
  inputClosed = false;
  seq = 0;
  connect();
}

ui.start.addEventListener("click", () => (ctx ? restart() : start()));
ui.talk.addEventListener("pointerdown", () => setTalking(true));
for (const kind of ["pointerup", "pointerleave", "pointercancel"]) {
  ui.talk.addEventListener(kind, () => { if (!ui.handsfree.checked) setTalking(false); });
}
window.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && !ui.talk.disabled) { e.preventDefault(); setTalking(true); }
});
window.addEventListener("keyup", (e) => {
  if (e.code === "Space" && !ui.handsfree.checked) setTalking(false);
});
ui.handsfree.addEventListener("change", () => setTalking(ui.handsfree.checked));
ui.end.addEventListener("click", () => {
  if (ws && input && !inputClosed) {
    inputClosed = true;
    ws.send(JSON.stringify({ control: "close", input }));
    setState("closing", "Input closed: waiting for the last reply…");
    ui.end.disabled = true;
  }
});

// /?autostart=1: start at once, hands-free (kiosk use, tests). The browser must allow the
// microphone and audio without a click (e.g. Chromium's --use-fake-ui-for-media-stream
// --autoplay-policy=no-user-gesture-required).
if (params.get("autostart") === "1") {
  ui.handsfree.checked = true;
  setTalking(true);
  start();
}
