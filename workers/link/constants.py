"""Every default both sides of the gateway<->worker link share, named with its unit.

The front and media planes read them through ``runtime.constants``; a worker process reads
them here, so it needs nothing from ``runtime``.
"""

from __future__ import annotations

# --- media geometry (slot sizes, clocks, rates) -------------------------------------------
MAX_FRAME_PIXELS = 1920 * 1080  # largest video frame a slot holds, in pixels (RGB24)
VIDEO_SLOTS = 4  # video slots per direction: one being processed, one latest, two in flight
AUDIO_SLOT_SAMPLES = 48_000 // 10  # samples per channel one audio slot holds (100 ms at 48 kHz)
AUDIO_MAX_CHANNELS = 2
AUDIO_SLOTS = 64  # audio slots per direction; the consumer copies audio out at once
AUDIO_RING_S = 10.0  # seconds of audio a worker buffers before it drops the oldest
AUDIO_FRAME_S = 0.020  # outgoing audio is re-framed to 20 ms, as WebRTC expects
AUDIO_DEFAULT_RATE = 48_000  # Hz: what a plain audio function gets, and the rate of WebRTC audio
VIDEO_CLOCK_RATE = 90_000  # RTP clock rate for video pts, in Hz
DEFAULT_OUTPUT_FPS = 30.0  # pace of server-generated video when a generator gives no pts

# --- the link: handshake, close, session arguments --------------------------------------------
ARGS_WAIT_TIMEOUT_S = 2.0  # wait_for_args(): a client that never answers gets the initial values
WORKER_CONNECT_TIMEOUT_S = 5.0  # gateway -> worker socket connect + hello
CLOSE_ACK_TIMEOUT_S = 2.0  # a worker that does not end its session by then is replaced
SOCKET_DIR_MODE = 0o700
SEGMENT_MODE = 0o600
TOKEN_BYTES = 16  # a lease's session token, which the worker checks on connect: 128 random bits
AUDIO_LEAD_S = 0.5  # a worker may produce audio this far ahead of real time; the gateway plays it out
