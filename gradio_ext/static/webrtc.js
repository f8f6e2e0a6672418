// rtcpool's WebRTC client. One file, two hosts, run the same way by both: as the body of a
// function of (element, trigger, props, server), once per rendered component.
// * Gradio: gradio_ext/webrtc.py passes this file as gr.HTML's js_on_load; `element` holds
//   static/webrtc.html, `props.rtc` is the component's _client_config(), `server` has the
//   component's server function webrtc_configuration().
// * Without Gradio: runtime/front/standalone.py inlines it in the page it serves at /webrtc/ui,
//   with the same markup, `props.rtc` built from the stream event, a `trigger` that does
//   nothing (there are no other components to read inputs from) and no server functions.
//
// One session at a time: [the connection's configuration from the server] -> getUserMedia ->
// RTCPeerConnection (+ data channel "text") -> wait for ICE gathering (aiortc does not
// trickle) -> POST <root>/webrtc/offer -> the answer -> processed media shown in the remote
// <video> / played by the <audio>. A Stop from the page posts <root>/webrtc/close, so the
// server frees the slot at once (also when the offer is still being answered). A server
// that goes silent (its media process killed) is noticed here within seconds (see
// SERVER_SILENCE_MS), and a session that had streamed resumes by itself: the page shows
// "reconnecting…" and posts a new peer connection's offer with the session's key (see
// RESUME_ATTEMPTS); the server answers it from a live media process, on the same handler.
// A full stream puts the page in its waiting room, as Gradio's queue does: the offer answers
// 202 with a ticket, the page follows the queue's updates (GET <root>/webrtc/queue, a
// server-sent-events stream read with fetch, since the ticket goes in a header, never in a
// URL), shows "queue: position/size | elapsed/eta s", and when its turn comes posts the same
// offer again with the ticket: the stream starts by itself. Stop while waiting, or leaving the
// page, gives the place up (POST <root>/webrtc/queue/leave).
// While streaming, the component fires Gradio's "tick" event every TICK_INTERVAL_MS, as
// gradio_webrtc's does, for apps that listen to it (webrtc.tick(fn, ...)).
// When the component leaves the page (a re-render), everything it started is ended.
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
const METER_FLOOR_DBFS = -60; // the level meter's zero: below a quiet room's noise
const METER_FFT_SIZE = 1024; // samples per level reading (~21 ms at 48 kHz)
const METER_RELEASE = 0.12; // share of the way down per animation frame: a peak falls in ~0.3 s at 60 fps
const METER_STEPS = 100; // the bar moves in 1 % steps, so a steady level writes no style
const SNAPSHOT_URL_TTL_MS = 10000; // the saved frame's object URL outlives the download's start
const DEVICES_EVENT = "rtcpool-devices"; // window event: device permission granted, relist
const TICK_INTERVAL_MS = 500; // "tick" while streaming: gradio_webrtc's stream_every of 0.5 s
// A close posted while its offer is still on the way may reach the server first (404): try again
// A fetch of outputs whose listeners never report back (a lost request) is given up after this
const OUTPUTS_DONE_TIMEOUT_MS = 15000;
// A server that vanishes without a word (its media process killed, its host gone) sends no
// BYE and no data-channel close, and Chromium reports the connection "failed" only ~30 s
// later, when ICE consent runs out. Two signals take such a connection for lost here
// instead, within seconds, and the session resumes (below) or, when it cannot, ends with
// LOST_TEXT (and posts /webrtc/close, for the deployment to free the slot):
// * silence: a live server sends something at least every ~1.5 s (aiortc's RTCP reports
//   for every track, answers to the browser's ICE checks), so nothing at all received for
//   SERVER_SILENCE_MS, read from getStats() every SILENCE_CHECK_MS, means it is gone;
// * "disconnected" (Chromium says it 5-7 s after the packets stop, measured here, when its
//   ICE checks go unanswered) not back to "connected" within DISCONNECTED_GRACE_MS: for when
//   the stats tell nothing, or only the server stopped hearing us. A short network blip
//   recovers within either bound; a dead server never does.
const SERVER_SILENCE_MS = 4000; // > 2.5 of aiortc's longest RTCP intervals, plus an ICE check answer
const SILENCE_CHECK_MS = 1000;
// Short, since a lost connection is resumed rather than ended: a false alarm (a blip that
// would have recovered) costs one resume offer, which the live media process answers with
// a new peer connection on the same session (Chromium's own "disconnected" is already
// 5-7 s late, see above)
const DISCONNECTED_GRACE_MS = 2000;
const LOST_TEXT = "lost the connection to the server";
// Resuming (issue 21): a session that had streamed and lost its connection, not by the
// user's Stop, is offered again (a new RTCPeerConnection on the same camera/microphone
// tracks, the same webrtc_id, plus its session_key), without the hang-up, which would end
// it for good. The server answers from a live media process, on the same worker and handler
// state, while it holds the session's lease: gateway.resume_grace_s (10 s by default) from
// when it saw the media process die. 403/404 (a wrong key, or the grace is over) end the
// session with LOST_TEXT, as do the bounds below; 409/429/5xx, a network error or a new
// connection that fails are tried again.
const RECONNECTING_TEXT = "reconnecting…";
// one at once (the scheduler may not have seen the death yet: the server waits up to 5 s
// for it within that request), then a few more, enough to span a media process's
// replacement by Ray without hammering a front that is itself restarting
const RESUME_ATTEMPTS = 6;
const RESUME_RETRY_MS = 1500; // between one attempt's failure and the next attempt
// the whole resume, from "reconnecting…": the server's default grace (10 s) plus the time
// the loss took to notice on its side, with room for one slow answer; past it the lease is
// gone and another attempt could only be refused
const RESUME_WINDOW_MS = 15000;
// The waiting room (see the top of this file)
const QUEUE_TICK_MS = 100; // the "elapsed/eta" clock, redrawn as often as Gradio's status tracker
// An updates stream that brings nothing, not even a keep-alive comment (the server sends one
// at least every 15 s), for this long is taken as lost and followed again
const QUEUE_SILENCE_MS = 40000;
const QUEUE_RECONNECTS = 2; // a lost updates stream is followed again this many times, the ticket unchanged
const QUEUE_RECONNECT_MS = 500;
const QUEUE_GONE_TEXT = {
  queue_timeout: "waited too long in the queue",
  left: "left the queue",
  expired: "the place in the queue lapsed",
};
const LABEL_GAP_PX = 12; // room below Gradio's floating label badge (it overlaps the block's top)
// The label badge's icon (Gradio's gr.HTML shows a "</>" code icon there), 32 x 32 viewBox
const LABEL_ICONS = {
  video: "M4 9h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H4a2 2 0 0 1-2-2V11a2 2 0 0 1 2-2zM23 14l7-4v12l-7-4z",
  audio:
    "M16 3a4 4 0 0 1 4 4v9a4 4 0 0 1-8 0V7a4 4 0 0 1 4-4zM9 15h2a5 5 0 0 0 10 0h2a7 7 0 0 1-6 6.93V26h4v2H11v-2h4v-4.07A7 7 0 0 1 9 15z",
};

const cfg = props.rtc || {};
const serverFns = typeof server === "object" && server ? server : {}; // the standalone page has none
const root = element.querySelector(".rtc-root");
const ui = {
  stage: root.querySelector(".rtc-stage"),
  placeholder: root.querySelector(".rtc-placeholder"),
  remote: root.querySelector(".rtc-remote"),
  local: root.querySelector(".rtc-local"),
  audio: root.querySelector(".rtc-audio"),
  snapshot: root.querySelector(".rtc-snapshot"),
  meter: root.querySelector(".rtc-meter"),
  meterFill: root.querySelector(".rtc-meter-fill"),
  meterLabel: root.querySelector(".rtc-meter-label"),
  button: root.querySelector(".rtc-button"),
  buttonLabel: root.querySelector(".rtc-button-label"),
  icon: root.querySelector(".rtc-icon"),
  status: root.querySelector(".rtc-status"),
  bar: root.querySelector(".rtc-timebar"),
  fill: root.querySelector(".rtc-timebar-fill"),
  camera: root.querySelector(".rtc-camera"),
  mic: root.querySelector(".rtc-mic"),
  messages: root.querySelector(".rtc-messages"),
};
const labels = Object.assign({ start: "Start", stop: "Stop", waiting: "Connecting…" }, cfg.button_labels || {});
const mode = cfg.mode || "send-receive";
const modality = cfg.modality || "video";
const sends = mode !== "receive";
const receives = mode !== "send";
const wantsVideo = modality !== "audio";
const wantsAudio = modality !== "video";
const outputListeners = Number(cfg.output_listeners) || 0; // listeners of "webrtc_outputs"

let session = null; // the live session, or null
let pageHiding = false; // in pagehide: what goes to the server goes as a beacon
let retryTimer = null;
let disposed = false; // the component left the page: nothing may start again

// Listeners on objects that outlive this component (window, mediaDevices), removed in dispose()
const disposers = [];
function listen(target, type, fn) {
  target.addEventListener(type, fn);
  disposers.push(() => target.removeEventListener(type, fn));
}

// --- static look: what the constructor asked for ----------------------------------------------

function applyOptions() {
  root.dataset.mode = mode;
  root.dataset.modality = modality;
  if (cfg.stream_id) root.dataset.streamId = cfg.stream_id;
  // the camera preview sits over the processed video when both are shown, else fills the stage
  if (sends && receives && wantsVideo) root.dataset.pip = "";
  // mirroring is for the user's own image only: the processed video is shown as sent
  if (cfg.mirror_webcam !== false) root.dataset.mirror = "";
  if (cfg.height) {
    root.dataset.sized = "";
    root.style.setProperty("--rtc-height", cfg.height);
  }
  if (cfg.width) root.style.setProperty("--rtc-width", cfg.width);
  if (cfg.pulse_color) root.style.setProperty("--rtc-pulse", cfg.pulse_color);
  if (cfg.icon_button_color) {
    root.style.setProperty("--rtc-button-bg", cfg.icon_button_color);
    root.style.setProperty("--rtc-button-fg", "#fff");
  }
  if (cfg.icon && modality === "audio") {
    ui.icon.addEventListener("error", () => { ui.icon.hidden = true; }); // unreachable URL: no broken image
    ui.icon.src = cfg.icon;
    ui.icon.hidden = false;
  }
  ui.meterLabel.textContent = sends ? "microphone" : "incoming audio";
  ui.snapshot.hidden = !(cfg.show_download_button && receives && wantsVideo);
  // interactive=False: display only; the stream starts from the app's trigger= instead
  ui.button.hidden = cfg.interactive === false;
  dressBlock();
}

// The Gradio block around this component (none on the standalone page). Its label badge
// shows gr.HTML's "</>" icon, replaced with a camera or microphone; and inside a gr.Group,
// whose rule `border: none` on its children leaves the "medium" border width that shows as a
// thick dark frame once Gradio's block sets border-style inline, the theme's width and colour
// (0 in a group) are set back.
let labelIcon = null; // the badge's <svg> once dressed: a re-rendered badge is dressed again
function dressBlock() {
  const block = element.closest ? element.closest(".block") : null;
  if (!block) return;
  block.style.borderWidth = "var(--block-border-width)";
  block.style.borderColor = "var(--block-border-color)";
  const label = block.querySelector(':scope > label[data-testid="block-label"]');
  root.style.setProperty("--rtc-label-gap", `${LABEL_GAP_PX}px`);
  root.toggleAttribute("data-labelled", label !== null);
  const svg = label ? label.querySelector("svg") : null;
  const path = svg ? svg.querySelector("path") : null;
  if (!path) return;
  svg.setAttribute("viewBox", "0 0 32 32");
  path.setAttribute("d", wantsVideo ? LABEL_ICONS.video : LABEL_ICONS.audio);
  labelIcon = svg;
}

// --- ui ------------------------------------------------------------------------------------

function setState(state, text) {
  root.dataset.state = state;
  ui.status.textContent = text || state;
  // while queued the button gives the place up: Stop, as Gradio's queue shows it; while
  // reconnecting it ends the session
  const stops = state === "streaming" || state === "queued" || state === "reconnecting";
  ui.buttonLabel.textContent = state === "connecting" ? labels.waiting : stops ? labels.stop : labels.start;
  showPlaceholder();
}

// What the video area says while it has no picture: an idle area is not a bare black box
function showPlaceholder() {
  const main = receives ? ui.remote : ui.local; // the camera preview is an inset when both show
  const state = root.dataset.state;
  let text;
  if (state === "connecting") text = labels.waiting;
  else if (state === "queued") text = session && session.queue ? queueText(session.queue) : "queue";
  else if (state === "streaming") text = receives ? "Waiting for the stream…" : "Waiting for the camera…";
  else if (state === "reconnecting") text = RECONNECTING_TEXT;
  else if (sends && cfg.interactive !== false) text = `Click ${labels.start} to share your camera`;
  else text = "Stream will appear here";
  ui.placeholder.textContent = text;
  ui.placeholder.hidden = main.classList.contains("live");
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

// A full stream that does not queue (its queue is off, or full): the user tries again later
function serverFull(seconds, limit, queueSize) {
  clearRetry();
  let left = seconds;
  const show = () => setState("full", `server full — retry in ${left} s`);
  show();
  if (limit) addMessage("warning", `this stream serves at most ${limit} session(s) at once`);
  if (queueSize) addMessage("warning", `the queue is full (${queueSize} waiting)`);
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

// --- audio level meter ----------------------------------------------------------------------------
// An AnalyserNode on the microphone (or, with no microphone, on the incoming audio), read once
// per animation frame into one preallocated buffer. The analyser is not connected to the
// speakers: the <audio> element plays the incoming audio.

const meter = { ctx: null, analyser: null, source: null, samples: null, shown: 0, step: -1, raf: 0 };

function meterContext() {
  // created inside the Start click (an AudioContext made outside a user gesture starts suspended)
  if (!meter.ctx) {
    meter.ctx = new (window.AudioContext || window.webkitAudioContext)();
    meter.analyser = meter.ctx.createAnalyser();
    meter.analyser.fftSize = METER_FFT_SIZE;
    if (!meter.samples) meter.samples = new Float32Array(METER_FFT_SIZE);
  }
  // a context the browser will not resume (no user gesture) leaves the meter at zero
  if (meter.ctx.state === "suspended") meter.ctx.resume().catch(() => {});
  return meter.ctx;
}

function attachMeter(stream) {
  if (!meter.ctx) return; // not an audio modality
  if (meter.source) meter.source.disconnect();
  meter.source = meter.ctx.createMediaStreamSource(stream);
  meter.source.connect(meter.analyser);
  if (!meter.raf) meter.raf = requestAnimationFrame(drawMeter);
}

function drawMeter() {
  const x = meter.samples;
  meter.analyser.getFloatTimeDomainData(x);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += x[i] * x[i];
  const rms = Math.sqrt(sum / x.length);
  // 0 at METER_FLOOR_DBFS and below, 1 at full scale, linear in dB
  const level = rms > 0 ? Math.min(1, Math.max(0, 1 - (20 * Math.log10(rms)) / METER_FLOOR_DBFS)) : 0;
  // rises at once, falls smoothly, as level meters do
  meter.shown = level >= meter.shown ? level : meter.shown - (meter.shown - level) * METER_RELEASE;
  paintMeter(meter.shown);
  meter.raf = requestAnimationFrame(drawMeter);
}

function paintMeter(value) {
  const step = Math.round(value * METER_STEPS);
  if (step === meter.step) return;
  meter.step = step;
  ui.meterFill.style.transform = `scaleX(${step / METER_STEPS})`;
  ui.meter.setAttribute("aria-valuenow", String(step / METER_STEPS));
}

function closeMeter() {
  if (meter.raf) cancelAnimationFrame(meter.raf);
  meter.raf = 0;
  if (meter.source) meter.source.disconnect();
  meter.source = null;
  if (meter.ctx) meter.ctx.close().catch(() => {}); // already closed: nothing to release
  meter.ctx = null;
  meter.analyser = null;
  meter.shown = 0;
  paintMeter(0);
}

// --- devices: the browser's own camera and microphone lists --------------------------------------

const chosen = { video: null, audio: null }; // deviceId picked by the user, for this and later sessions
const pickers = [];
if (sends && wantsVideo) pickers.push({ kind: "video", deviceKind: "videoinput", select: ui.camera, noun: "camera", known: null, ids: [] });
if (sends && wantsAudio) pickers.push({ kind: "audio", deviceKind: "audioinput", select: ui.mic, noun: "microphone", known: null, ids: [] });

function liveTrack(s, kind) {
  return s && s.media ? s.media.getTracks().find((t) => t.kind === kind) || null : null;
}

async function refreshDevices() {
  if (!pickers.length || !navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  let devices;
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch (_) {
    return;
  }
  for (const p of pickers) {
    // before camera/microphone permission, browsers list devices without ids: nothing to pick
    const list = devices.filter((d) => d.kind === p.deviceKind && d.deviceId);
    p.ids = list.map((d) => d.deviceId);
    const key = JSON.stringify(list.map((d) => [d.deviceId, d.label]));
    if (key !== p.known) {
      p.known = key;
      p.select.replaceChildren(...list.map((d, i) => new Option(d.label || `${p.noun} ${i + 1}`, d.deviceId)));
    }
    p.select.parentElement.hidden = list.length === 0;
    const track = liveTrack(session, p.kind);
    const current = (track && track.getSettings().deviceId) || chosen[p.kind];
    if (current && list.some((d) => d.deviceId === current)) p.select.value = current;
  }
}

function liveSender(pc, track) {
  return pc.getSenders().some((x) => x.track === track);
}

function withDevice(constraints, deviceId) {
  return Object.assign({}, constraints === true ? {} : constraints, { deviceId });
}

// Switching while streaming swaps the track under the same RTP sender (replaceTrack): no new
// offer, the session and its worker go on; the server just sees frames from another camera.
function switchDevice(s, kind, deviceId) {
  // one switch at a time, each after the last; a failed one is reported and the list
  // shows the device still in use
  s.switching = s.switching
    .then(() => replaceDevice(s, kind, deviceId))
    .catch((err) => {
      addMessage("warning", `cannot switch ${kind === "video" ? "camera" : "microphone"}: ${err.message || err.name}`);
      refreshDevices();
    });
}

async function replaceDevice(s, kind, deviceId) {
  const old = liveTrack(s, kind);
  if (s.closed || !old || old.getSettings().deviceId === deviceId) return;
  const wanted = mediaConstraints()[kind];
  const fresh = await navigator.mediaDevices.getUserMedia({ [kind]: withDevice(wanted, { exact: deviceId }) });
  const track = fresh.getTracks()[0];
  // a resume may replace the peer connection meanwhile (it sends s.media's tracks, the old
  // one still): then the new connection's sender is switched too, and the closed one's
  // refusal is no failure
  let pc = null;
  while (!s.closed && pc !== s.pc) {
    pc = s.pc;
    const sender = pc.getSenders().find((x) => x.track === old);
    if (!sender) break;
    try {
      await sender.replaceTrack(track);
    } catch (err) {
      if (!s.closed && pc === s.pc) {
        track.stop();
        throw err;
      }
    }
  }
  if (s.closed || !liveSender(s.pc, track)) return track.stop(); // stopped meanwhile: the new device goes off too
  s.media.removeTrack(old);
  s.media.addTrack(track);
  old.stop();
  if (kind === "video") ui.local.srcObject = new MediaStream([track]);
  else attachMeter(new MediaStream([track]));
}

for (const p of pickers) {
  p.select.addEventListener("change", () => {
    chosen[p.kind] = p.select.value;
    if (session && session.media) switchDevice(session, p.kind, p.select.value);
  });
}

// --- snapshot: save the processed frame on screen -----------------------------------------------

function saveSnapshot() {
  const video = ui.remote;
  if (!video.videoWidth) return;
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    if (!blob) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${cfg.stream_id || "stream"}-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), SNAPSHOT_URL_TTL_MS);
  }, "image/png");
}

// --- signalling ------------------------------------------------------------------------------

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  // crypto.randomUUID needs a secure context; ids only need to be unguessable-ish and unique
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The gateway's route /webrtc/<name> ("offer", "close")
function routeUrl(name) {
  // the standalone page says where its gateway's offer route is (relative to the page); the
  // others are beside it
  if (cfg.offer_url) return new URL(name, new URL(cfg.offer_url, window.location.href)).href;
  // Gradio's root (it includes the sub-path when the app is served under one); same rule
  // as Gradio's own page: on the same host name, the page's origin is the reachable one
  const configured = window.gradio_config && window.gradio_config.root;
  const base = new URL(configured || "/", window.location.href);
  const origin = base.hostname === window.location.hostname ? window.location.origin : base.origin;
  return `${origin}${base.pathname.replace(/\/$/, "")}/webrtc/${name}`;
}

// Tell the server this page ended the session, so it frees the slot now rather than at its
// connect or inactivity timeout. It takes the session's key, which only the answer brings: a
// session stopped while its offer was on its way is hung up when the answer arrives (see
// postOffer). keepalive: it still goes out when the page is closing.
function hangUp(s) {
  if (s.hungUp || !s.key) return;
  s.hungUp = true;
  fetch(routeUrl("close"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ webrtc_id: s.id, session_key: s.key }),
    keepalive: true,
  }).catch(() => {}); // the page or the server is going away: its timeouts end the session
}

// This session as the component's value: its id and key, which the server functions of the
// page's events (inputs, outputs) present; the key is the server's secret for the session
function handle(s) {
  return s.key ? `${s.id}/${s.key}` : s.id;
}

// The RTCPeerConnection configuration, whole (iceServers, iceTransportPolicy, ...): as given,
// or, when the app's rtc_configuration is a function, fetched for this connection
async function connectionConfig() {
  if (!cfg.rtc_configuration_per_connection) return cfg.rtc_configuration || {};
  const fetchConfig = serverFns.webrtc_configuration;
  // Gradio's server functions resolve to undefined when the call fails (it logs a warning)
  const got = typeof fetchConfig === "function" ? await fetchConfig() : undefined;
  if (!got || typeof got !== "object" || Array.isArray(got)) {
    throw new Error("the server did not give this connection's configuration (rtc_configuration)");
  }
  return got;
}

function mediaConstraints() {
  const tc = cfg.track_constraints;
  let video = DEFAULT_VIDEO;
  let audio = DEFAULT_AUDIO;
  // track_constraints: {video, audio} for both tracks, or the constraints of the one track
  if (tc && ("video" in tc || "audio" in tc)) {
    video = tc.video ?? DEFAULT_VIDEO;
    audio = tc.audio ?? DEFAULT_AUDIO;
  } else if (tc) {
    if (!wantsAudio) video = tc;
    if (!wantsVideo) audio = tc;
  }
  // a device picked in the list, while the browser still lists it ("exact": Chromium
  // weighs an "ideal" device against the size constraints and may pick another)
  for (const p of pickers) {
    if (!chosen[p.kind] || !p.ids.includes(chosen[p.kind])) continue;
    if (p.kind === "video") video = withDevice(video, { exact: chosen.video });
    else audio = withDevice(audio, { exact: chosen.audio });
  }
  return { video: wantsVideo ? video : false, audio: wantsAudio ? audio : false };
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

const QUEUED = "queued"; // postOffer's result when the stream is full and the page waits in line

// The body of an offer (and of a resume: the same, plus the session's key)
function offerBody(s, extra) {
  return Object.assign({ sdp: s.pc.localDescription.sdp, type: "offer", webrtc_id: s.id, stream_id: cfg.stream_id }, extra);
}

// The offer: the answer's body, QUEUED (the page holds a ticket in s.queue), or null (stopped,
// or the stream is full and does not queue: serverFull shows it)
async function postOffer(s) {
  const abort = (s.abort = new AbortController()); // only its timeout aborts it
  const timer = setTimeout(() => abort.abort(), OFFER_TIMEOUT_MS);
  let resp;
  s.offered = true;
  try {
    resp = await fetch(routeUrl("offer"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(
        offerBody(s, {
          // the server queues a full stream's offers unless told not to (its default: true)
          queue: cfg.queue === false ? false : undefined,
          // admitted: the same offer again, with the ticket that holds the slot
          queue_ticket: s.queue && s.queue.ticket ? s.queue.ticket : undefined,
        }),
      ),
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
  if (resp.status === 202 && body && body.status === "queued" && body.queue) {
    s.offered = false; // no session on the server: a place in its queue, which stop() gives up
    joinQueue(s, body.queue);
    if (s.closed) leaveQueue(s); // stopped while it was answered
    return s.closed ? null : QUEUED;
  }
  if (resp.ok) {
    s.key = body && typeof body.session_key === "string" ? body.session_key : null;
    if (s.queue) s.queue.ticket = null; // spent: the slot it held is this session's now
    if (s.closed) hangUp(s); // stopped while it was answered: the server must not keep it
    return body;
  }
  s.offered = false; // refused: there is no session on the server to hang up
  // stopped while the answer was on its way: a refusal for it must not touch a newer session
  if (s.closed || s !== session) return null;
  const meta = (body && body.meta) || {};
  if (resp.status === 429) {
    const wait = parseInt(resp.headers.get("Retry-After") || meta.retry_after, 10) || DEFAULT_RETRY_AFTER_S;
    if (s.queue) s.queue.ticket = null;
    teardown(s);
    session = null;
    serverFull(wait, meta.limit, meta.queue_size);
    return null;
  }
  // 410 queue_ticket_gone: the slot held for this page lapsed before the offer came back
  if (s.queue && meta.error && String(meta.error).startsWith("queue_")) s.queue.ticket = null;
  throw new Error(meta.message || `the server refused the stream (HTTP ${resp.status})`);
}

// --- the waiting room --------------------------------------------------------------------------
// s.queue while the page holds (or held) a place in a full stream's queue: the ticket (the
// server's secret for the place: sent in a header or a body, never in a URL, never logged),
// the last update, and the clock the status line counts from.

function joinQueue(s, info) {
  let q = s.queue;
  if (!q) {
    q = s.queue = { ticket: null, joinedAt: performance.now(), position: null, size: null, etaAt: null, abort: null };
    // (a 202 that arrives after Stop still brings the ticket to give up: no clock for it)
    if (!s.closed) s.timers.push(setInterval(() => drawQueue(s), QUEUE_TICK_MS));
  }
  if (typeof info.ticket === "string" && info.ticket) q.ticket = info.ticket;
  queueUpdate(q, info);
  if (s === session && !s.closed) {
    ui.bar.hidden = q.etaAt === null;
    setState("queued", queueText(q));
    drawQueue(s);
  }
}

function queueUpdate(q, info) {
  if (Number.isFinite(info.position)) q.position = info.position;
  if (Number.isFinite(info.size)) q.size = info.size;
  // as Gradio's status tracker shows it: the wait expected from joining, i.e. the time
  // waited so far plus the server's estimate of what is left (none: unknown)
  q.etaAt = Number.isFinite(info.eta_s) ? (performance.now() - q.joinedAt) / 1000 + info.eta_s : null;
}

// Gradio's words: "queue: 2/4 | 3.1/40.0s", or "queue: 2/4 | 3.1s" without an estimate
function queueText(q) {
  const elapsed = (performance.now() - q.joinedAt) / 1000;
  const place = q.position !== null ? `${q.position}/${q.size !== null ? q.size : "?"}` : "…";
  const eta = q.etaAt !== null ? `/${q.etaAt.toFixed(1)}` : "";
  return `queue: ${place} | ${elapsed.toFixed(1)}${eta}s`;
}

function drawQueue(s) {
  const q = s.queue;
  if (s !== session || s.closed || !q || root.dataset.state !== "queued") return;
  const text = queueText(q);
  ui.status.textContent = text;
  ui.placeholder.textContent = text;
  ui.bar.hidden = q.etaAt === null;
  if (q.etaAt !== null) {
    const waited = (performance.now() - q.joinedAt) / 1000;
    ui.fill.style.width = `${Math.min(100, (100 * waited) / Math.max(q.etaAt, 0.1)).toFixed(1)}%`;
  }
}

// An error that ends the wait: the server said no (reason), or the ticket is no more
function queueEnded(message) {
  const err = new Error(message);
  err.queueEnded = true;
  return err;
}

// Follow the queue until this page's turn: true (admitted: post the offer again), null
// (stopped meanwhile); throws when the place is gone or the updates cannot be followed.
async function waitTurn(s) {
  for (let lost = 0; ; lost++) {
    let outcome = null;
    try {
      outcome = await readQueue(s);
    } catch (err) {
      if (s.closed) return null;
      if (err.queueEnded) throw err;
      // a network error or a silent stream: follow it again with the same ticket below
    }
    if (s.closed) return null;
    if (outcome === "admitted") return true;
    if (lost >= QUEUE_RECONNECTS) throw queueEnded("lost the queue's updates");
    await new Promise((r) => setTimeout(r, QUEUE_RECONNECT_MS));
    if (s.closed) return null;
  }
}

// One updates stream: "admitted", or undefined when it ended without a verdict
async function readQueue(s) {
  const q = s.queue;
  const abort = (q.abort = new AbortController()); // teardown aborts it
  let heardAt = performance.now();
  const watchdog = setInterval(() => {
    if (performance.now() - heardAt > QUEUE_SILENCE_MS) abort.abort();
  }, SILENCE_CHECK_MS);
  try {
    const resp = await fetch(`${routeUrl("queue")}?webrtc_id=${encodeURIComponent(s.id)}`, {
      headers: { "X-Queue-Ticket": q.ticket, Accept: "text/event-stream" },
      cache: "no-store",
      signal: abort.signal,
    });
    if (!resp.ok) {
      let meta = {};
      try {
        meta = (await resp.json()).meta || {};
      } catch (_) {
        // not JSON: reported by status
      }
      q.ticket = null; // the server does not know it (any more)
      throw queueEnded(meta.message || `the queue refused the updates (HTTP ${resp.status})`);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const parse = sseParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return undefined;
      heardAt = performance.now();
      for (const ev of parse(decoder.decode(value, { stream: true }))) {
        if (ev.event !== "queue") continue;
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch (_) {
          continue; // not ours
        }
        if (onQueueEvent(s, data) === "admitted") {
          // the server ends the stream itself once it has said so: read it out in the
          // background rather than cancel it (a dropped updates stream gives the place up)
          drain(reader);
          return "admitted";
        }
      }
    }
  } finally {
    clearInterval(watchdog);
  }
}

function drain(reader) {
  reader.read().then(({ done }) => (done ? undefined : drain(reader)), () => {});
}

function onQueueEvent(s, data) {
  const q = s.queue;
  if (!data || typeof data !== "object" || s.closed) return undefined;
  if (data.state === "waiting") {
    queueUpdate(q, data);
    drawQueue(s);
  } else if (data.state === "admitted") {
    return "admitted";
  } else if (data.state === "gone") {
    q.ticket = null; // dropped: there is nothing to leave
    throw queueEnded(data.message || QUEUE_GONE_TEXT[data.reason] || `dropped from the queue (${data.reason})`);
  }
  return undefined;
}

// Server-sent events from text chunks: a function of the next chunk that returns the events it
// completes, each {event, data}. Comment lines (keep-alives) are skipped; lines may end in
// \n, \r\n or \r, split anywhere across chunks.
function sseParser() {
  let buffer = "";
  let event = "";
  let data = [];
  return (chunk) => {
    buffer += chunk;
    const out = [];
    const eol = /\r\n|\r|\n/g;
    let start = 0;
    let m;
    while ((m = eol.exec(buffer)) !== null) {
      if (m[0] === "\r" && m.index === buffer.length - 1) break; // maybe half of a "\r\n"
      const line = buffer.slice(start, m.index);
      start = eol.lastIndex;
      if (line === "") {
        if (data.length) out.push({ event: event || "message", data: data.join("\n") });
        event = "";
        data = [];
      } else if (line[0] !== ":") {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
    }
    buffer = buffer.slice(start);
    return out;
  };
}

// Give the place up, so the next in line moves up now. On pagehide a beacon carries it (a
// fetch may not outlive the page); the server also drops a ticket whose updates stream ends.
function leaveQueue(s) {
  const q = s.queue;
  if (!q || !q.ticket) return;
  const body = JSON.stringify({ webrtc_id: s.id, ticket: q.ticket });
  q.ticket = null;
  const url = routeUrl("queue/leave");
  if (pageHiding && navigator.sendBeacon) {
    try {
      if (navigator.sendBeacon(url, new Blob([body], { type: "application/json" }))) return;
    } catch (_) {
      // a browser that refuses a JSON beacon: the keepalive fetch below
    }
  }
  fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body, keepalive: true }).catch(() => {});
}

// --- the session -------------------------------------------------------------------------------

// A session's peer connection, the first or a resume's: its media (the camera/microphone
// tracks got once, for every connection of the session), its data channel and its handlers.
// Each handler names its connection: one a resume has replaced says nothing any more.
function wirePeer(s, pc) {
  if (sends) {
    for (const track of s.media.getTracks()) pc.addTrack(track, s.media);
  } else {
    if (wantsVideo) pc.addTransceiver("video", { direction: "recvonly" });
    if (wantsAudio) pc.addTransceiver("audio", { direction: "recvonly" });
  }
  // the data channel must be in the offer: the server answers with it and talks on it
  const dc = (s.dc = pc.createDataChannel("text"));
  dc.onmessage = (ev) => {
    if (dc === s.dc) onServerMessage(s, ev.data);
  };
  pc.ontrack = (ev) => {
    if (pc === s.pc) showRemote(s, ev);
  };
  pc.onconnectionstatechange = () => {
    if (pc === s.pc) onConnectionState(s);
  };
  return pc;
}

async function start() {
  if (disposed) return;
  clearRetry();
  clearMessages();
  const s = {
    id: newId(), pc: null, dc: null, media: null, timers: [], startedAt: null, closed: false,
    switching: Promise.resolve(), // device switches, one after the other
    abort: null, // the offer's fetch, while it is on its way
    offered: false, // the server may have (or be making) a session for this id
    answered: false,
    key: null, // the server's secret for this session, from the answer
    hungUp: false,
    timeUp: false, // the server ended it at its time limit
    lostTimer: null, // while "disconnected": see DISCONNECTED_GRACE_MS
    silence: null, // the interval of watchSilence() on the current peer connection
    resume: null, // while reconnecting: see resumeSession()
    replaced: [], // peer connections a resume replaced, not closed yet: see replacePeer()
    outputs: { wanted: 0, waiting: 0, timer: 0 }, // fetches of outputs: see fetchOutput()
    queue: null, // a place in the stream's queue: see joinQueue()
  };
  session = s;
  root.dataset.webrtcId = s.id;
  ui.bar.hidden = true;
  setState("connecting", "connecting…");
  try {
    if (wantsAudio) meterContext(); // before any await: still inside the click
    const config = await connectionConfig();
    if (s.closed) return; // stopped while the server was asked
    s.config = config; // a resume's, when the server cannot give it another
    s.pc = new RTCPeerConnection(config);
    if (sends) {
      s.media = await navigator.mediaDevices.getUserMedia(mediaConstraints());
      if (s.closed) return teardown(s); // stopped while the permission prompt was open
      const video = s.media.getVideoTracks()[0];
      const audio = s.media.getAudioTracks()[0];
      if (video) {
        ui.local.srcObject = new MediaStream([video]);
        ui.local.classList.add("live");
        showPlaceholder();
      }
      if (audio) attachMeter(new MediaStream([audio]));
      // labels and ids are there once permission is granted: for every component on the page
      window.dispatchEvent(new Event(DEVICES_EVENT));
    }
    const pc = wirePeer(s, s.pc);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    if (s.closed) return;
    let answer = await postOffer(s);
    // a full stream: wait in line (the camera preview stays on; nothing is sent until the
    // answer), then the same offer again, with the ticket; queued again means wait on
    while (answer === QUEUED) {
      if (!(await waitTurn(s))) return; // stopped while waiting: stop() gave the place up
      setState("connecting", "your turn — connecting…");
      ui.bar.hidden = true;
      answer = await postOffer(s);
    }
    // stopped while it was answered: postOffer has told the server, which ends the session
    if (!answer || s.closed) return;
    s.answered = true;
    await pc.setRemoteDescription(answer);
    // the session exists on the server now: send it the inputs' current values
    sendArgs(s);
  } catch (err) {
    fail(s, err);
  }
}

function showRemote(s, ev) {
  if (!receives || s.closed) return;
  const stream = ev.streams[0] || new MediaStream([ev.track]);
  if (ev.track.kind === "video") {
    ui.remote.srcObject = stream;
    if (s.resume !== null) return; // shown once the resumed connection is up: resumed()
    ui.remote.classList.add("live");
    ui.snapshot.disabled = false;
    showPlaceholder();
  } else {
    ui.audio.srcObject = stream;
    // with no microphone, the meter shows what the server sends (Chromium feeds a remote
    // track to Web Audio only while a media element plays it: the <audio> above does)
    if (!sends) attachMeter(new MediaStream([ev.track]));
  }
}

function onConnectionState(s) {
  if (s.closed) return;
  const state = s.pc.connectionState;
  if (state !== "disconnected" && s.lostTimer !== null) {
    clearTimeout(s.lostTimer); // back to "connected" (or on to "failed"/"closed", handled below)
    s.lostTimer = null;
  }
  if (state === "connected" && s.resume !== null) {
    resumed(s);
  } else if (state === "connected" && s.startedAt === null) {
    // the server counts time_limit from the first media, which is about now
    s.startedAt = performance.now();
    setState("streaming");
    startCountdown(s);
    s.timers.push(setInterval(() => {
      if (s === session && !s.closed) trigger("tick");
    }, TICK_INTERVAL_MS));
    watchSilence(s);
  } else if (state === "disconnected") {
    // see DISCONNECTED_GRACE_MS: wait for ICE to recover, else take the connection for lost
    if (s.lostTimer === null) {
      const pc = s.pc;
      s.lostTimer = setTimeout(() => {
        s.lostTimer = null;
        if (!s.closed && pc === s.pc && pc.connectionState !== "connected") connectionLost(s);
      }, DISCONNECTED_GRACE_MS);
    }
  } else if (state === "failed") {
    // one that never connected had nothing to resume: the server could not be reached
    if (s.startedAt === null) fail(s, new Error("the connection to the server failed"));
    else connectionLost(s);
  } else if (state === "closed") {
    stop(s, "stopped", "the server closed the connection", true);
  }
}

// See SERVER_SILENCE_MS. The bytes received on the connection's transport(s), read from
// getStats(); an interval that saw them grow marks the server heard (a check the browser
// delays, a throttled background tab, still sees the growth: no false alarm from that).
// One watch per peer connection: a resume's connection starts its own once connected.
function watchSilence(s) {
  stopSilence(s);
  const pc = s.pc;
  const watch = { bytes: -1, heardAt: performance.now(), busy: false };
  s.silence = setInterval(async () => {
    if (s.closed || watch.busy || pc !== s.pc) return;
    watch.busy = true;
    let bytes = -1;
    try {
      const stats = await pc.getStats();
      let sum = 0;
      let found = false;
      for (const r of stats.values()) {
        if (r.type === "transport" && typeof r.bytesReceived === "number") {
          sum += r.bytesReceived;
          found = true;
        }
      }
      if (found) bytes = sum;
    } catch (_) {
      // a closing connection: nothing to tell
    } finally {
      watch.busy = false;
    }
    if (s.closed || pc !== s.pc || bytes < 0) return; // no transport stats: "disconnected" is the signal left
    const now = performance.now();
    if (bytes > watch.bytes) {
      watch.bytes = bytes;
      watch.heardAt = now;
    } else if (now - watch.heardAt >= SERVER_SILENCE_MS) {
      connectionLost(s);
    }
  }, SILENCE_CHECK_MS);
}

function stopSilence(s) {
  if (s.silence !== null) clearInterval(s.silence);
  s.silence = null;
}

// --- resuming (see RESUME_ATTEMPTS) ------------------------------------------------------------
// s.resume while reconnecting: when it began, the attempts made, the timer of the next one
// and the window's deadline. The session itself (its id, key, camera tracks, countdown,
// output fetches) goes on; only its peer connection is replaced, as often as needed.

const RETRY = { retry: true }; // postResume's answer: try again, if the bounds allow

// The current connection is lost (silence, "disconnected" too long, "failed"): resume the
// session when it can be, else end it as before
function connectionLost(s) {
  if (s.closed) return;
  if (s.resume !== null) return retryResume(s); // the resume's own connection failed
  // never connected, or no key (an answer without one): there is no session to resume
  if (s.startedAt === null || !s.key || disposed) return fail(s, new Error(LOST_TEXT));
  resumeSession(s);
}

function resumeSession(s) {
  const r = (s.resume = { since: performance.now(), attempts: 0, timer: null, deadline: null, pending: false });
  // past the window the session is given up even with an attempt on its way (its answer,
  // if it comes, is hung up: postResume)
  r.deadline = setTimeout(() => {
    if (s.resume === r) giveUp(s, `no resume within ${RESUME_WINDOW_MS / 1000} s`);
  }, RESUME_WINDOW_MS);
  stopSilence(s);
  if (s.lostTimer !== null) clearTimeout(s.lostTimer);
  s.lostTimer = null;
  // the last picture would stay frozen: hidden, the placeholder says what is going on
  // instead (the camera preview goes on: its tracks are the resume's too)
  ui.remote.classList.remove("live");
  ui.snapshot.disabled = true;
  setState("reconnecting", RECONNECTING_TEXT);
  resumeAttempt(s, r);
}

async function resumeAttempt(s, r) {
  r.timer = null;
  r.attempts += 1;
  // until this attempt's offer is answered, the connection it replaces (or one already
  // replaced) may report its end too: that is no reason for another attempt
  r.pending = true;
  let outcome;
  try {
    // per-connection configuration (TURN credentials that expire) is asked for again
    let config = s.config;
    try {
      config = await connectionConfig();
    } catch (_) {
      // the server function failed: the session's first configuration
    }
    if (s.closed || s.resume !== r) return;
    const pc = replacePeer(s, config);
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    if (s.closed || s.resume !== r) return;
    outcome = await postResume(s);
    if (s.closed || s.resume !== r) return;
    if (outcome.answer) {
      closeReplaced(s); // the server holds the new connection now
      await pc.setRemoteDescription(outcome.answer);
      if (s.resume === r) r.pending = false;
      return; // "connected" ends the resume (resumed); "failed" tries again (connectionLost)
    }
  } catch (err) {
    outcome = RETRY; // a browser that refused the new connection's offer or the answer
  }
  if (s.closed || s.resume !== r) return;
  r.pending = false;
  if (outcome.refused) giveUp(s, outcome.refused);
  else retryResume(s);
}

function retryResume(s) {
  const r = s.resume;
  if (r.timer !== null || r.pending) return; // already due, or on its way
  const elapsed = performance.now() - r.since;
  if (r.attempts >= RESUME_ATTEMPTS) return giveUp(s, `${r.attempts} resume attempts failed`);
  if (elapsed + RESUME_RETRY_MS >= RESUME_WINDOW_MS) return giveUp(s, `no resume within ${RESUME_WINDOW_MS / 1000} s`);
  r.timer = setTimeout(() => resumeAttempt(s, r), RESUME_RETRY_MS);
}

// The current connection is replaced by a new one. The old one goes without a hang-up (that
// would end the session on the server), and is closed only once a resume is answered (see
// closeReplaced): a media process that is still alive (the network changed, a false alarm)
// takes the close of the connection it holds as the client leaving, before the resume that
// replaces it could arrive. The tracks it sent are the session's and go on to the new one.
function replacePeer(s, config) {
  s.replaced.push(s.pc);
  s.pc = new RTCPeerConnection(config);
  return wirePeer(s, s.pc);
}

function closeReplaced(s) {
  for (const pc of s.replaced.splice(0)) pc.close(); // its data channel with it
}

// One resume offer: {answer}, RETRY, or {refused: why} (403: not this session's key;
// 404: its grace is over, or it ended; any other refusal that another try cannot change)
async function postResume(s) {
  let resp;
  try {
    resp = await fetch(routeUrl("offer"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(offerBody(s, { session_key: s.key })),
    });
  } catch (_) {
    return RETRY; // the network, or the front itself restarting
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    // not JSON: judged by status below
  }
  if (resp.ok && body && typeof body.sdp === "string") {
    if (s.closed || !s.resume) {
      // Stop (or the window's end) came while it was answered: Stop's hang-up may have
      // reached the server before this resume made the session anew, so it goes again
      s.hungUp = false;
      hangUp(s);
      return RETRY;
    }
    // the same key, as the protocol says; a server that made the session anew has the say
    if (typeof body.session_key === "string" && body.session_key) s.key = body.session_key;
    return { answer: { sdp: body.sdp, type: body.type || "answer" } };
  }
  // 409: an earlier attempt's session is still being set up there; 408/429/5xx: busy,
  // restarting, or the media process that was to answer died too
  if (resp.status === 408 || resp.status === 409 || resp.status === 429 || resp.status >= 500) return RETRY;
  const meta = (body && (body.meta || body)) || {};
  const reason = meta.error || meta.message || "";
  return { refused: `the server did not resume the session (HTTP ${resp.status}${reason ? ` ${reason}` : ""})` };
}

// The new connection is up: streaming again, on the same session
function resumed(s) {
  const r = s.resume;
  clearTimeout(r.deadline);
  if (r.timer !== null) clearTimeout(r.timer);
  s.resume = null;
  // the new connection's video (showRemote kept it hidden until now), or the old one's, when
  // it came back by itself before it was replaced
  if (receives && ui.remote.srcObject) {
    ui.remote.classList.add("live");
    ui.snapshot.disabled = false;
  }
  setState("streaming");
  watchSilence(s);
  // the fetch of outputs that was on its way to the lost connection's media process may
  // never report back: given up, as its timeout would, and the next one asked; and a
  // "fetch_output" sent while the data channel was down never arrived: one more fetch (an
  // empty one changes nothing on the page)
  if (outputListeners) {
    const q = s.outputs;
    if (q.waiting > 0) {
      q.waiting = 0;
      clearTimeout(q.timer);
    }
    fetchOutput(s);
  }
}

// The session cannot be resumed: it ends as a lost connection always did (the hang-up
// posted too, so a server that still holds it frees it now)
function giveUp(s, why) {
  addMessage("warning", why);
  fail(s, new Error(LOST_TEXT));
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
      s.timeUp = Boolean(msg.data && msg.data.reason === "time_limit_reached");
      stop(s, "stopped", endReason(msg.data));
      break;
    case "update_connection":
      // fastrtc's handler asking the component to show its connection as closed
      if (msg.data === "closed" || (msg.data && msg.data.status === "closed")) stop(s, "stopped", "the server closed the connection", true);
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
  if (reason === "server_draining") return "the server is restarting";
  return reason ? String(reason) : "the server ended the stream";
}

function sendArgs(s) {
  if (s !== session || s.closed) return;
  props.value = handle(s); // the args event reads the session from this component's value
  // a macrotask later, so Gradio has taken the new value when the event collects its inputs
  setTimeout(() => {
    if (s === session && !s.closed) trigger("webrtc_args");
  }, 0);
}

// One "fetch_output" per output the handler produced (an AdditionalOutputs, or a function's
// values for the stream's other outputs). Each trigger of the custom event "webrtc_outputs"
// makes every listener take the oldest of its kind off the session's queue on the server, so
// none is lost, even after the stream has ended. One fetch at a time: the next is fired when
// every listener of the last one has finished (each is followed by a ".then" that calls
// window.__rtcpool.outputsDone with this component's value), because concurrent fetches can
// complete out of order and leave an older value on screen, and a listener that reads its
// own outputs as inputs (a Chatbot it appends to) must see the previous result. A fetch
// whose listeners never report back (a lost request) is given up after OUTPUTS_DONE_TIMEOUT_MS.
function fetchOutput(s) {
  if (!outputListeners) return; // nothing on this page shows outputs (the standalone page)
  s.outputs.wanted += 1;
  registry.outputs[s.id] = () => outputsDone(s);
  pumpOutputs(s);
}

function pumpOutputs(s) {
  const q = s.outputs;
  if (q.waiting > 0) return;
  clearTimeout(q.timer);
  // a newer session owns this component's value now: what is left of this one stays on the
  // server until its grace period ends
  if (q.wanted === 0 || disposed || (session !== null && session !== s)) {
    q.wanted = 0;
    delete registry.outputs[s.id];
    return;
  }
  q.wanted -= 1;
  q.waiting = outputListeners;
  q.timer = setTimeout(() => {
    q.waiting = 0;
    pumpOutputs(s);
  }, OUTPUTS_DONE_TIMEOUT_MS);
  props.value = handle(s); // the listeners read the session from this component's value
  setTimeout(() => trigger("webrtc_outputs"), 0); // once Gradio has taken the value
}

function outputsDone(s) {
  const q = s.outputs;
  if (q.waiting === 0) return; // a late report of a fetch given up on
  q.waiting -= 1;
  if (q.waiting === 0) pumpOutputs(s);
}

function fail(s, err) {
  if (s.closed) return;
  let text = err && err.message ? err.message : String(err);
  if (err && err.name === "NotAllowedError") text = "camera/microphone permission was denied";
  if (err && err.name === "AbortError") text = "the server did not answer in time";
  addMessage("error", text);
  stop(s, "error", text, true);
}

// End a session. `local`: this page ends it (Stop, an error found here, the page or the
// component going away), so the server is told; otherwise the server ended it already.
function stop(s, state, why, local = false) {
  if (s.closed) return;
  // with the offer still on its way, the answer hangs up (it brings the key: postOffer)
  if (local && s.offered) hangUp(s);
  if (local) leaveQueue(s); // waiting, or admitted and not answered yet: the next in line moves up
  teardown(s);
  if (s === session) {
    session = null;
    setState(state, why ? `${state} — ${why}` : state);
  }
}

function teardown(s) {
  s.closed = true;
  // an offer still on its way is left to arrive: its answer has the key to hang up with. One
  // not posted yet (gathering) is aborted before it goes out (start() checks s.closed)
  for (const t of s.timers) clearInterval(t);
  s.timers = [];
  if (s.queue && s.queue.abort) s.queue.abort.abort(); // its updates stream
  if (s.lostTimer !== null) clearTimeout(s.lostTimer);
  s.lostTimer = null;
  stopSilence(s);
  if (s.resume !== null) {
    clearTimeout(s.resume.deadline);
    if (s.resume.timer !== null) clearTimeout(s.resume.timer);
    s.resume = null; // an attempt on its way sees it and stops (postResume hangs its answer up)
  }
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
  closeReplaced(s);
  if (s.media) for (const track of s.media.getTracks()) track.stop();
  // a session stopped during its permission prompt is torn down again when the prompt
  // returns, maybe under a newer session: the shared view belongs to that one then
  if (session !== null && session !== s) return;
  for (const media of [ui.remote, ui.local, ui.audio]) {
    media.srcObject = null;
    media.classList.remove("live");
  }
  ui.snapshot.disabled = true;
  if (s.timeUp) ui.fill.style.width = "0%"; // the server's clock says the time is up: shown so
  else ui.bar.hidden = true;
  closeMeter();
}

// --- this component on the page -------------------------------------------------------------
// window.__rtcpool: `streams[stream_id]` is the component a stream's `trigger=` starts (and
// tests drive); `outputs[webrtc_id]` receives the ".then" reports of output fetches. Each
// rendered component registers itself and takes itself out when it leaves the page.

const registry = (window.__rtcpool = window.__rtcpool || {});
registry.streams = registry.streams || {};
registry.outputs = registry.outputs || {};
registry.mounted = registry.mounted || [];
registry.outputsDone =
  registry.outputsDone ||
  ((value) => {
    // the component's value is the session's handle, "webrtc_id/key": keyed by the id
    const done = registry.outputs[String(value).split("/")[0]];
    if (done) done();
  });
const api = {
  streamId: cfg.stream_id,
  start: () => {
    if (!session) start();
  },
  stop: () => userStop(),
  session: () => session,
};
registry.mounted.push(api);
if (cfg.stream_id) registry.streams[cfg.stream_id] = api; // the newest rendering of the stream

// The user's Stop. While waiting in line it gives the place up and the component is idle again,
// as if Start had not been pressed: there was no stream to stop
function userStop() {
  if (!session) return;
  if (root.dataset.state === "queued") stop(session, "idle", "left the queue", true);
  else stop(session, "stopped", undefined, true);
}

function dispose() {
  if (disposed) return;
  if (session) stop(session, "stopped", "the component was removed", true);
  disposed = true;
  clearRetry();
  closeMeter();
  observer.disconnect();
  for (const undo of disposers.splice(0)) undo();
  registry.mounted.splice(registry.mounted.indexOf(api), 1);
  if (cfg.stream_id && registry.streams[cfg.stream_id] === api) {
    // another rendering of the same stream, if one is still on the page, takes over
    const other = registry.mounted.filter((a) => a.streamId === cfg.stream_id).pop();
    if (other) registry.streams[cfg.stream_id] = other;
    else delete registry.streams[cfg.stream_id];
  }
}

// Gradio removes a component's DOM when it re-renders (gr.render) or unmounts it: that is
// when everything this one started must end. The check per DOM change is two property reads.
let wasConnected = root.isConnected;
const observer = new MutationObserver(() => {
  if (!root.isConnected) {
    if (wasConnected) dispose();
    return;
  }
  wasConnected = true;
  if (labelIcon !== null && !labelIcon.isConnected) dressBlock(); // Gradio redrew the badge
});
observer.observe(document.documentElement, { childList: true, subtree: true });

applyOptions();
// the badge may be drawn after this script runs
requestAnimationFrame(() => {
  if (!disposed && labelIcon === null) dressBlock();
});
ui.button.addEventListener("click", () => {
  if (session) userStop();
  else start();
});
ui.snapshot.addEventListener("click", saveSnapshot);
if (pickers.length && navigator.mediaDevices) {
  listen(navigator.mediaDevices, "devicechange", refreshDevices);
  listen(window, DEVICES_EVENT, refreshDevices);
  refreshDevices();
}
listen(window, "pagehide", () => {
  pageHiding = true;
  try {
    if (session) stop(session, "stopped", undefined, true);
  } finally {
    pageHiding = false; // a page kept in the back-forward cache may be shown again
  }
});
setState("idle");
