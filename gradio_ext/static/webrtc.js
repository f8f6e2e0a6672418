// rtcpool's WebRTC client. gradio_ext/webrtc.py inlines this file as gr.HTML's js_on_load,
// so it runs once per rendered component with `element`, `props` and `trigger` in scope.
//
// One session at a time: getUserMedia -> RTCPeerConnection (+ data channel "text") ->
// wait for ICE gathering (aiortc does not trickle) -> POST <gradio root>/webrtc/offer ->
// the answer -> processed media shown in the remote <video>.
//
// The stream's other inputs reach the worker through the custom Gradio event
// "webrtc_args" (keep that name quoted in this file: gr.HTML finds custom events by
// searching js_on_load for it). Its inputs are this component, whose value we set to the
// session's webrtc_id, and the stream's other input components.

const ICE_GATHER_TIMEOUT_MS = 5000; // past this, send the offer with the candidates found so far
const OFFER_TIMEOUT_MS = 90000; // a cold pool may have to start a worker before it answers
const COUNTDOWN_TICK_MS = 250;
const RETRY_TICK_MS = 1000;
const DEFAULT_RETRY_AFTER_S = 5; // when a 429 carries no Retry-After
const MAX_MESSAGES = 4; // errors and warnings kept on screen
const DEFAULT_VIDEO = { width: { ideal: 640 }, height: { ideal: 480 } };
const DEFAULT_AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

const cfg = props.rtc || {};
const root = element.querySelector(".rtc-root");
const ui = {
  remote: root.querySelector(".rtc-remote"),
  local: root.querySelector(".rtc-local"),
  audio: root.querySelector(".rtc-audio"),
  button: root.querySelector(".rtc-button"),
  status: root.querySelector(".rtc-status"),
  bar: root.querySelector(".rtc-timebar"),
  fill: root.querySelector(".rtc-timebar-fill"),
  messages: root.querySelector(".rtc-messages"),
};
const labels = Object.assign({ start: "Start", stop: "Stop", waiting: "Connecting…" }, cfg.button_labels || {});
const sends = cfg.mode !== "receive";
const receives = cfg.mode !== "send";
const wantsVideo = cfg.modality !== "audio";
const wantsAudio = cfg.modality !== "video";

let session = null; // the live session, or null
let retryTimer = null;

// --- ui ------------------------------------------------------------------------------------

function setState(state, text) {
  root.dataset.state = state;
  ui.status.textContent = text || state;
  ui.button.textContent = state === "connecting" ? labels.waiting : state === "streaming" ? labels.stop : labels.start;
}

function addMessage(kind, text) {
  // a handler that fails on every frame reports every frame: count repeats, do not list them
  const line = `${kind}: ${text}`;
  const last = ui.messages.lastElementChild;
  if (last && last.dataset.line === line) {
    last.dataset.count = String(Number(last.dataset.count) + 1);
    last.textContent = `${line} (×${last.dataset.count})`;
    return;
  }
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.line = line;
  li.dataset.count = "1";
  li.textContent = line;
  ui.messages.appendChild(li);
  while (ui.messages.children.length > MAX_MESSAGES) ui.messages.firstElementChild.remove();
}

function clearMessages() {
  ui.messages.replaceChildren();
}

function clearRetry() {
  if (retryTimer !== null) clearInterval(retryTimer);
  retryTimer = null;
}

function serverFull(seconds, limit) {
  let left = seconds;
  const show = () => setState("full", `server full — retry in ${left} s`);
  show();
  if (limit) addMessage("warning", `this stream serves at most ${limit} session(s) at once`);
  retryTimer = setInterval(() => {
    left -= 1;
    if (left > 0) return show();
    clearRetry();
    setState("idle", "idle — the server may have room now");
  }, RETRY_TICK_MS);
}

function startCountdown(s) {
  const limit = Number(cfg.time_limit);
  if (!limit) return;
  ui.bar.hidden = false;
  const tick = () => {
    const left = Math.max(0, limit - (performance.now() - s.startedAt) / 1000);
    ui.fill.style.width = `${(100 * left) / limit}%`;
    if (s === session && root.dataset.state === "streaming") {
      ui.status.textContent = `streaming — ${Math.ceil(left)} s left`;
    }
  };
  tick();
  s.timers.push(setInterval(tick, COUNTDOWN_TICK_MS));
}

// --- signalling ------------------------------------------------------------------------------

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  // crypto.randomUUID needs a secure context; ids only need to be unguessable-ish and unique
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function offerUrl() {
  // Gradio's root (it includes the sub-path when the app is served under one); same rule
  // as Gradio's own page: on the same host name, the page's origin is the reachable one
  const configured = window.gradio_config && window.gradio_config.root;
  const base = new URL(configured || "/", window.location.href);
  const origin = base.hostname === window.location.hostname ? window.location.origin : base.origin;
  return `${origin}${base.pathname.replace(/\/$/, "")}/webrtc/offer`;
}

function mediaConstraints() {
  const tc = cfg.track_constraints;
  // track_constraints: {video, audio} for both tracks, or the constraints of the one track
  if (tc && ("video" in tc || "audio" in tc)) {
    return {
      video: wantsVideo ? (tc.video ?? DEFAULT_VIDEO) : false,
      audio: wantsAudio ? (tc.audio ?? DEFAULT_AUDIO) : false,
    };
  }
  return {
    video: wantsVideo ? (tc && !wantsAudio ? tc : DEFAULT_VIDEO) : false,
    audio: wantsAudio ? (tc && !wantsVideo ? tc : DEFAULT_AUDIO) : false,
  };
}

function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", onChange);
      resolve();
    };
    const onChange = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const timer = setTimeout(finish, ICE_GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", onChange);
  });
}

async function postOffer(s) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), OFFER_TIMEOUT_MS);
  let resp;
  try {
    resp = await fetch(offerUrl(), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        sdp: s.pc.localDescription.sdp,
        type: "offer",
        webrtc_id: s.id,
        stream_id: cfg.stream_id,
      }),
      signal: abort.signal,
    });
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    // not JSON: reported by status below
  }
  if (resp.ok) return body;
  const meta = (body && body.meta) || {};
  if (resp.status === 429) {
    const wait = parseInt(resp.headers.get("Retry-After") || meta.retry_after, 10) || DEFAULT_RETRY_AFTER_S;
    teardown(s);
    if (s === session) session = null;
    serverFull(wait, meta.limit);
    return null;
  }
  throw new Error(meta.message || `the server refused the stream (HTTP ${resp.status})`);
}

// --- the session -------------------------------------------------------------------------------

async function start() {
  clearRetry();
  clearMessages();
  const s = { id: newId(), pc: null, dc: null, media: null, timers: [], startedAt: null, closed: false };
  session = s;
  root.dataset.webrtcId = s.id;
  setState("connecting", "connecting…");
  try {
    const pc = (s.pc = new RTCPeerConnection({ iceServers: cfg.ice_servers || [] }));
    if (sends) {
      s.media = await navigator.mediaDevices.getUserMedia(mediaConstraints());
      if (s.closed) return teardown(s); // stopped while the permission prompt was open
      if (wantsVideo) {
        ui.local.srcObject = s.media;
        ui.local.classList.add("live");
      }
      for (const track of s.media.getTracks()) pc.addTrack(track, s.media);
    } else {
      if (wantsVideo) pc.addTransceiver("video", { direction: "recvonly" });
      if (wantsAudio) pc.addTransceiver("audio", { direction: "recvonly" });
    }
    // the data channel must be in the offer: the server answers with it and talks on it
    s.dc = pc.createDataChannel("text");
    s.dc.onmessage = (ev) => onServerMessage(s, ev.data);
    pc.ontrack = (ev) => showRemote(ev);
    pc.onconnectionstatechange = () => onConnectionState(s);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    if (s.closed) return;
    const answer = await postOffer(s);
    if (!answer || s.closed) return;
    await pc.setRemoteDescription(answer);
    // the session exists on the server now: send it the inputs' current values
    sendArgs(s);
  } catch (err) {
    fail(s, err);
  }
}

function showRemote(ev) {
  if (!receives) return;
  const stream = ev.streams[0] || new MediaStream([ev.track]);
  if (ev.track.kind === "video") {
    ui.remote.srcObject = stream;
    ui.remote.classList.add("live");
  } else {
    ui.audio.srcObject = stream;
  }
}

function onConnectionState(s) {
  if (s.closed) return;
  const state = s.pc.connectionState;
  if (state === "connected" && s.startedAt === null) {
    // the server counts time_limit from the first media, which is about now
    s.startedAt = performance.now();
    setState("streaming");
    startCountdown(s);
  } else if (state === "failed") {
    fail(s, new Error("the connection to the server failed"));
  } else if (state === "closed") {
    stop(s, "stopped", "the server closed the connection");
  }
}

function onServerMessage(s, raw) {
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch (_) {
    return; // not ours
  }
  switch (msg.type) {
    case "error":
    case "warning":
      addMessage(msg.type, msg.message);
      break;
    case "send_input":
      sendArgs(s);
      break;
    case "fetch_output":
      fetchOutput(s);
      break;
    case "end_stream":
      stop(s, "stopped", endReason(msg.data));
      break;
    default:
      break; // log, stopword, ...: not shown by this component
  }
}

function endReason(data) {
  const reason = data && typeof data === "object" ? data.reason : data;
  if (reason === "time_limit_reached") return `time limit of ${data.time_limit} s reached`;
  if (reason === "worker_failed") return "the stream's worker stopped";
  if (reason === "lease_reclaimed") return "the server took the stream back";
  return reason ? String(reason) : "the server ended the stream";
}

function sendArgs(s) {
  if (s !== session || s.closed) return;
  props.value = s.id; // the args event reads the session id from this component's value
  // a macrotask later, so Gradio has taken the new value when the event collects its inputs
  setTimeout(() => {
    if (s === session && !s.closed) trigger("webrtc_args");
  }, 0);
}

// One "fetch_output" per AdditionalOutputs the handler yielded: each trigger of the custom
// event "webrtc_outputs" takes the oldest one off the session's queue on the server, so
// none is lost and they arrive in order, even after the stream has ended.
function fetchOutput(s) {
  if (!s.id) return;
  props.value = s.id;
  setTimeout(() => trigger("webrtc_outputs"), 0);
}

function fail(s, err) {
  if (s.closed) return;
  let text = err && err.message ? err.message : String(err);
  if (err && err.name === "NotAllowedError") text = "camera/microphone permission was denied";
  if (err && err.name === "AbortError") text = "the server did not answer in time";
  addMessage("error", text);
  stop(s, "error", text);
}

function stop(s, state, why) {
  if (s.closed) return;
  teardown(s);
  if (s === session) {
    session = null;
    setState(state, why ? `${state} — ${why}` : state);
  }
}

function teardown(s) {
  s.closed = true;
  for (const t of s.timers) clearInterval(t);
  s.timers = [];
  if (s.dc) {
    try {
      s.dc.close();
    } catch (_) {
      // already closed
    }
  }
  if (s.pc) {
    for (const sender of s.pc.getSenders()) if (sender.track) sender.track.stop();
    s.pc.close();
  }
  if (s.media) for (const track of s.media.getTracks()) track.stop();
  for (const media of [ui.remote, ui.local, ui.audio]) {
    media.srcObject = null;
    media.classList.remove("live");
  }
  ui.bar.hidden = true;
}

ui.button.addEventListener("click", () => {
  if (session) stop(session, "stopped");
  else start();
});
// A stream's `trigger=` (e.g. a button's click) starts it from Python-side wiring, which
// finds this component here by its stream id; tests read the live session here too.
window.__rtcpool = window.__rtcpool || {};
if (cfg.stream_id) {
  window.__rtcpool[cfg.stream_id] = {
    start: () => { if (!session) start(); },
    stop: () => { if (session) stop(session, "stopped"); },
    session: () => session,
  };
}
window.addEventListener("pagehide", () => {
  if (session) stop(session, "stopped");
});
setState("idle");
