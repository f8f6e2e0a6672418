"""Every default of rtcpool, named with its unit.

The config file (runtime/config.py) overrides the ones a deployment may want to change;
the rest are protocol facts. Environment variables `RTCPOOL_*` override the config file.
"""

from __future__ import annotations

from typing import Final, Literal

from workers.link.constants import (  # noqa: F401  (shared with the worker side, defined there once)
    ARGS_WAIT_TIMEOUT_S,
    AUDIO_DEFAULT_RATE,
    AUDIO_FRAME_S,
    AUDIO_LEAD_S,
    AUDIO_MAX_CHANNELS,
    AUDIO_RING_S,
    AUDIO_SLOT_SAMPLES,
    AUDIO_SLOTS,
    CLOSE_ACK_TIMEOUT_S,
    DEFAULT_OUTPUT_FPS,
    MAX_FRAME_PIXELS,
    SEGMENT_MODE,
    SOCKET_DIR_MODE,
    TOKEN_BYTES,
    VIDEO_CLOCK_RATE,
    VIDEO_SLOTS,
    WORKER_CONNECT_TIMEOUT_S,
)

# --- media geometry -------------------------------------------------------------------
AUDIO_JITTER_PREFETCH = 4  # packets aiortc's audio jitter buffer waits for (its own default)
VP8_SPEED = 6  # libvpx cpu-used of the gateway's VP8 encoder (aiortc's value); 0-16, higher is faster
VP8_DENOISE = False  # libvpx's temporal denoiser on the gateway's encoder (aiortc turns it on)
VIDEO_CODECS: tuple[Literal["h264", "vp8"], ...] = ("h264", "vp8")  # gateway.video_codecs: H.264 where the peer has it (half VP8's CPU)
H264_ENCODER: Final = "libx264"  # gateway.h264_encoder

AUDIO_OUT_MAX_S = 60.0  # audio buffered for a client at most (WebRTC or WebSocket); the oldest goes first
VP8_MIME = "video/vp8"
H264_MIME = "video/h264"
MAX_PORT = 65535  # the largest TCP/UDP port number

# --- media processes ------------------------------------------------------------------
MAX_MEDIA_PROCESSES = 64  # gateway.processes at most, per host
AUTO_MEDIA_MIN_CORES = 4  # gateway.processes: auto on fewer cores = the app's process alone
AUTO_CORES_PER_MEDIA_PROCESS = 2  # gateway.processes: auto = one media process per this many cores
MEDIA_POLL_S = 1.0  # how often a front reads its media processes' load (and sees one die)
MEDIA_START_TIMEOUT_S = 60.0  # a media process not started by then is killed and retried
# a media process's event loop held this long is a stall: warned once with the stack holding
# it, and the process is not ready meanwhile (runtime/media/stall_guard.py). Every session
# on that loop froze for this long (25 audio frames of 20 ms): a user hears it. Ordinary lag
# (a GC pass, a busy tick) is the load sampler's loop_lag_ms, not a stall. In ms; 0: off.
LOOP_STALL_WARN_MS = 500

# --- signalling limits ----------------------------------------------------------------
MAX_OFFER_BYTES = 64 * 1024  # largest POST /webrtc/offer body; real SDP offers are < 10 KiB
MAX_INPUT_BYTES = 1024 * 1024  # largest body on the input route
MAX_WEBRTC_ID_CHARS = 128
MAX_DATA_CHANNEL_MESSAGE_BYTES = 64 * 1024  # larger client messages are refused with a warning

# --- session lifecycle ----------------------------------------------------------------
CONNECT_TIMEOUT_S = 15.0  # answer sent -> ICE connected, else the session is ended
MEDIA_INACTIVITY_TIMEOUT_S = 10.0  # no media from a sending client for this long ends the session
END_STREAM_GRACE_S = 0.5  # time between telling the client the stream ends and closing it
RETRY_AFTER_S = 5  # Retry-After header on HTTP 429, in seconds
DRAIN_TIMEOUT_S = 30.0  # SIGTERM: live sessions may run this long before they are ended
DRAIN_RETRY_AFTER_S = 10  # Retry-After on the 503 a draining gateway answers offers with, in seconds
RUN_DIR_ENV = "RTCPOOL_RUN_DIR"  # where gateway processes announce themselves to `rtcpool drain`
DRAIN_POLL_S = 0.2  # how often a drain looks whether its sessions have ended
# a gateway removes the /dev/shm segments of dead rtcpool processes at start-up and this often
# after (runtime/ops/shm_janitor.py): a listdir and a stat per segment, so cheap
SHM_JANITOR_INTERVAL_S = 60.0

# --- control plane (Ray) ----------------------------------------------------------------
SCHEDULER_NAME = "rtcpool-scheduler"
RAY_NAMESPACE = "rtcpool"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # the marker resource Ray gives its head node
LEASE_TIMEOUT_S = 60.0  # acquire(): how long an offer may wait for a worker to start
WORKER_START_TIMEOUT_S = 120.0  # a worker that is not ready by then is killed and replaced
RAY_CALL_TIMEOUT_S = 10.0  # any other control-plane call from the gateway
# a front's first calls to the scheduler at start-up: a fresh driver resolves the actor first,
# which on a loaded host (CI: two test processes and a browser) took past RAY_CALL_TIMEOUT_S
REGISTER_TIMEOUT_S = 30.0
HEARTBEAT_S = 2.0  # gateway -> scheduler lease renewal period
GATEWAY_TTL_S = 15.0  # leases of a gateway silent for this long are reclaimed
POOL_PREWARM = 1  # idle workers kept ready per stream event
POOL_MAX = 8  # workers per stream event when concurrency_limit is None
# failover (docs/failover.md): a session whose worker dies gets a fresh one from its pool
# idle workers a stream with a concurrency_limit keeps beyond it, for a failover to take
# warm (a full stream's pool otherwise holds none: a cold start, ~2 s here); each holds its
# Ray resources, so none by default
POOL_SPARE_WORKERS = 0
SNAPSHOT_INTERVAL_S = 1.0  # a handler's snapshot() is sent at most (and, if it has one, at least) this often
MAX_RESTARTS = 3  # worker restarts a session may have within RESTART_WINDOW_S; one more ends it
RESTART_WINDOW_S = 60.0
RESUME_GRACE_S = 10.0  # a session whose media process died waits this long for its client to re-offer
# a worker's RSS past this ends its session for a fresh worker (failover); generous: a model
# of a few GB plus the runtime's ~300 MB fits, a handler that leaks is caught before the host OOMs
WORKER_MEMORY_LIMIT_MB = 16_384
MAX_SNAPSHOT_BYTES = 1 << 20  # a handler's packed snapshot past this is not kept (warned once)

# --- the waiting room (a full stream's queue, owned by the scheduler) --------------------------
QUEUE_MAX = 100  # users waiting per stream event at most (Gradio's max_size); beyond: 429 queue_full
QUEUE_TIMEOUT_S = 600.0  # a user waiting longer than this is told and dropped
QUEUE_ADMIT_HOLD_S = 10.0  # an admitted user's slot is held this long for its offer to come back
QUEUE_TICKET_TTL_S = 15.0  # a waiting ticket no updates stream follows is dropped after this
QUEUE_MAX_PER_ADDRESS = 4  # tickets one client address may hold per stream event (loopback exempt)
QUEUE_POLL_S = 5.0  # a front's long poll of the scheduler returns after this with fresh ETAs

# --- data plane -------------------------------------------------------------------------
