"""A Python WebRTC client for any rtcpool (or fastrtc) server, for tests and benchmarks.

It sends a synthetic video track at a set rate, with a frame counter painted into the
pixels, receives the processed track, reads the counter back out of each received frame,
and reports delivered fps and send -> receive latency. The counter survives VP8 and H.264:
each bit is a block of solid black or white, and the next 16 blocks repeat it inverted as a
check. ``--codec vp8|h264`` offers one video codec alone.

    python -m runtime.clients.webrtc http://127.0.0.1:7860 --seconds 10 --fps 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlparse

import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from runtime import constants as C
from runtime.clients.sources import (  # noqa: F401  (the client's public names, as before the split)
    AUDIO_RATE,
    DEFAULT_FPS,
    DEFAULT_SIZE,
    MARK_BLOCKS,
    REPLAY_CYCLE_FRAMES,
    ArrayAudioTrack,
    CounterVideoTrack,
    ReplayVideoTrack,
    encode_cycle,
    paint_counter,
    read_counter,
    synthetic_image,
)
from runtime.media.frames import newest_frame
from runtime.media.ice import pin_host_addresses
from runtime.media.jitter import release_video_on_marker, set_audio_prefetch
from runtime.media.video_codecs import RTX_MIME, VideoCodec, negotiated, use_gateway_encoders
from workers.link.shape import StreamShape

OFFER_TIMEOUT_S = 90.0  # a cold pool may need to start a worker before it answers
QUEUE_FOLLOW_ATTEMPTS = 5  # updates streams opened for one wait in line, at most
# auto_resume (docs/failover.md): a session whose server side vanished is offered again with its
# key. Silent this long (no frame or audio while the server sends media), or ICE failed: resume,
# up to RESUME_ATTEMPTS times RESUME_RETRY_S apart (the server holds it gateway.resume_grace_s)
AUTO_RESUME_SILENCE_S = 2.0
AUTO_RESUME_FIRST_MEDIA_S = 10.0  # a resumed connection with no media by then is resumed again
AUTO_RESUME_CHECK_S = 0.25
RESUME_ATTEMPTS = 8
RESUME_RETRY_S = 1.0
RESUME_GIVE_UP = (403, 404)  # the key is wrong, or the session is gone: no retry helps
QUEUE_FOLLOW_RETRY_S = 0.5  # between two of them (less than the ticket's follow grace)
def _json_of(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return {"raw": resp.text}


class ServerFull(Exception):
    def __init__(self, body: dict[str, Any], retry_after: str | None) -> None:
        super().__init__(f"server full: {body}")
        self.body = body
        self.retry_after = retry_after


class QueueDropped(Exception):
    """The stream's line let this client go (it waited too long, its slot's hold lapsed, the
    stream went away): ``view`` is the server's last word (state "gone", reason, message)."""

    def __init__(self, view: dict[str, Any]) -> None:
        super().__init__(f"dropped from the queue: {view.get('reason')}: {view.get('message')}")
        self.view = view


class OfferRejected(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"offer rejected with HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Report:
    sent: int = 0
    received: int = 0
    marked: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(round(q / 100 * (len(data) - 1))))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "marked": self.marked,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "latency_p50_ms": self.percentile(50),
            "latency_p95_ms": self.percentile(95),
            "latency_mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
        }


class Client:
    """One WebRTC session against ``url``: ``await connect()``, watch, ``await close()``."""

    def __init__(
        self,
        url: str,
        *,
        mode: str = "send-receive",
        modality: str = "video",
        stream_id: str | None = None,
        webrtc_id: str | None = None,
        fps: float = DEFAULT_FPS,
        size: tuple[int, int] = DEFAULT_SIZE,
        image: np.ndarray | None = None,
        ice_host_addresses: list[str] | None = None,
        keep_frames: int = 1,
        audio: np.ndarray | None = None,
        audio_loop: bool = False,
        audio_jitter_prefetch: int | None = None,
        video_release_on_marker: bool = True,
        replay: int = 0,
        token: str | None = None,
        queue: bool = True,
        auto_resume: bool = False,
        codec: str | None = None,
        replay_motion: bool = False,
    ) -> None:
        """``replay``: send a cycle of this many pre-encoded frames (:class:`ReplayVideoTrack`,
        for load tests; REPLAY_CYCLE_FRAMES is a good length) instead of encoding live.
        ``token``: sent as ``Authorization: Bearer`` (gateway.auth: a bearer or join token).
        ``queue``: on a full stream that queues, wait in its line (``connect()`` returns once
        admitted and answered; ``queue_views`` has what the line said on the way); False:
        the server's 429 (:class:`ServerFull`) at once. ``auto_resume``: when the server side
        goes silent or ICE fails, offer again for the same session with its key (:meth:`resume`),
        as the page's component does; ``resumes`` counts the ones that took. ``codec``: offer
        this video codec alone (``vp8`` or ``h264``); None offers aiortc's list and the server
        picks (gateway.video_codecs). ``video_codec`` is what was negotiated. ``replay_motion``:
        the replayed picture moves and carries sensor noise, as a webcam's (codec benchmarks)."""
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.queue = queue
        self.codec = None if codec is None else VideoCodec(codec).value
        self.video_codec: VideoCodec | None = None
        self.queue_views: list[dict[str, Any]] = []  # the 202's place, then every update
        self.ticket: str | None = None  # the line's ticket while this client waits in it
        self.url = url.rstrip("/")
        self.mode = mode
        self.modality = modality
        self.stream_id = stream_id
        self.webrtc_id = webrtc_id or uuid.uuid4().hex[:16]
        self.session_key: str | None = None  # from the answer
        self.shape = StreamShape.parse(mode, modality)
        self.source: CounterVideoTrack | None = None
        if self.shape.takes_video:
            self.source = ReplayVideoTrack(fps, size, image, replay, replay_motion) if replay else CounterVideoTrack(fps, size, image)
        self.audio_source = ArrayAudioTrack(audio if audio is not None else np.zeros(0, np.int16), loop=audio_loop) if self.shape.takes_audio else None
        self.audio_received: list[np.ndarray] = []  # mono int16 at 48 kHz, one array per 20 ms frame
        self.audio_times: list[float] = []  # arrival time (monotonic) of each received audio frame
        host = urlparse(self.url).hostname or ""
        if ice_host_addresses is None and (host.startswith("127.") or host == "localhost"):
            ice_host_addresses = ["127.0.0.1"]
        if ice_host_addresses:
            pin_host_addresses(ice_host_addresses)
        self.auto_resume = auto_resume
        self.resumes = 0
        self.resuming: asyncio.Task[None] | None = None
        self._resumed_at: float | None = None
        self.last_media_at: float | None = None  # monotonic, of the last frame or audio received
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("text")
        self.messages: list[dict[str, Any]] = []
        self.on_message: list[Callable[[dict[str, Any]], None]] = []
        self.report = Report()
        self.frames: list[np.ndarray] = []
        self.keep_frames = keep_frames
        self.first_frame = asyncio.Event()
        self.ended = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started: float | None = None
        self.audio_jitter_prefetch = audio_jitter_prefetch
        # decode each received frame on its last packet, as browsers do, not a frame later
        # as aiortc does (runtime/media/jitter.py): latency measured here is then the server's
        self.video_release_on_marker = video_release_on_marker
        self._wire(self.pc, self.channel)

    def _wire(self, pc: RTCPeerConnection, channel: Any) -> None:
        channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    def _on_message(self, text: Any) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = {"type": "raw", "data": text}
        self.messages.append(msg)
        for fn in self.on_message:
            fn(msg)
        if msg.get("type") == "end_stream":
            self.ended.set()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "failed" and self.auto_resume and self.session_key:
            self._resume_soon()
        elif state in ("failed", "closed"):
            self.ended.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        receive = self._receive if track.kind == "video" else self._receive_audio
        self._spawn(receive(track))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _receive_audio(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        try:
            while True:
                frame = cast(av.AudioFrame, await track.recv())  # an audio track's frames
                now = time.monotonic()
                self.last_media_at = now
                for out in resampler.resample(frame):
                    self.audio_received.append(out.to_ndarray().reshape(-1))
                    self.audio_times.append(now)
        except MediaStreamError:
            return

    def received_audio(self) -> np.ndarray:
        """Everything heard so far, mono int16 at 48 kHz."""
        return np.concatenate(self.audio_received) if self.audio_received else np.zeros(0, np.int16)

    async def _receive(self, track: MediaStreamTrack) -> None:
        report = self.report
        pc = self.pc  # a resume replaces it: then the end of this track is not the session's
        sent_at = self.source.sent_at if self.source is not None else {}
        try:
            while True:
                frame = await track.recv()
                # count every frame that arrived, measure the newest: a client loop that
                # falls behind must not add its own queue to the server's latency
                frame, skipped, _ = newest_frame(track, frame)
                report.received += skipped
                now = self.last_media_at = time.monotonic()
                arr = frame.to_ndarray(format="rgb24")
                report.received += 1
                counter = read_counter(arr)
                if counter is not None and counter in sent_at:
                    report.marked += 1
                    report.latencies_ms.append((now - sent_at[counter]) * 1000.0)
                self.frames.append(arr)
                if len(self.frames) > self.keep_frames:
                    self.frames.pop(0)
                self.first_frame.set()
        except MediaStreamError:
            if self.pc is pc and self.resuming is None:
                self.ended.set()

    def _add_media(self) -> None:
        for kind, source in (("video", self.source), ("audio", self.audio_source)):
            if source is not None:
                self.pc.addTrack(source)
            elif self.shape.sends_video if kind == "video" else self.shape.sends_audio:
                self.pc.addTransceiver(kind, direction="recvonly")
        if self.codec is not None:
            # offer this codec alone (and its RTX), so the server must answer it or refuse
            wanted = VideoCodec(self.codec).mime
            codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in (wanted, RTX_MIME)]
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(codecs)

    async def connect(self) -> None:
        self._add_media()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)  # gathers every candidate: no trickle needed
        body: dict[str, Any] = {"sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.webrtc_id, "queue": self.queue}
        if self.stream_id is not None:
            body["stream_id"] = self.stream_id
        async with httpx.AsyncClient(timeout=OFFER_TIMEOUT_S) as http:
            resp = await http.post(f"{self.url}/webrtc/offer", json=body, headers=self.headers)
            answer = _json_of(resp)
            while resp.status_code == 202:
                # in the stream's line: follow it, and post the same offer again when admitted
                self.ticket = answer["queue"]["ticket"]
                self.queue_views.append({"state": "waiting", **{k: v for k, v in answer["queue"].items() if k != "ticket"}})
                try:
                    await self._wait_turn(http)
                except BaseException:
                    await self.pc.close()
                    raise
                resp = await http.post(f"{self.url}/webrtc/offer", json={**body, "queue_ticket": self.ticket}, headers=self.headers)
                answer = _json_of(resp)
            self.ticket = None
        if resp.status_code == 429:
            await self.pc.close()
            raise ServerFull(answer, resp.headers.get("retry-after"))
        if resp.status_code != 200 or "sdp" not in answer:
            await self.pc.close()
            raise OfferRejected(resp.status_code, answer)
        # the server's secret for this session: every later request about it carries it
        self.session_key = answer.get("session_key")
        await self._apply_answer(answer)
        self._started = time.monotonic()
        if self.auto_resume and (self.shape.sends_video or self.shape.sends_audio):
            self._spawn(self._watch_silence())

    async def _apply_answer(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        self.video_codec = negotiated(video[0]) if video else None
        # the server's real-time encoders on this side too (aiortc's H.264 one runs libx264's
        # "medium" preset): a load generator should not cost more than what it measures
        use_gateway_encoders(self.pc, vp8_speed=C.VP8_SPEED, vp8_denoise=C.VP8_DENOISE, h264_encoder=C.H264_ENCODER)
        if isinstance(self.source, ReplayVideoTrack) and self.video_codec is not None:
            self.source.use_codec(self.video_codec)
        set_audio_prefetch(self.pc, self.audio_jitter_prefetch)
        if self.video_release_on_marker:
            release_video_on_marker(self.pc)

    # --- resume (docs/failover.md) -----------------------------------------------------------

    async def _watch_silence(self) -> None:
        """The server sends media continuously: a silence means its side is gone."""
        while not self.ended.is_set():
            await asyncio.sleep(AUTO_RESUME_CHECK_S)
            if self.resuming is not None or not self.auto_resume:
                continue  # (auto_resume may be turned off after connect())
            now = time.monotonic()
            last = self.last_media_at
            if last is not None and now - last > AUTO_RESUME_SILENCE_S:
                self._resume_soon()
            elif last is None and self._resumed_at is not None and now - self._resumed_at > AUTO_RESUME_FIRST_MEDIA_S:
                self._resume_soon()

    def _resume_soon(self) -> None:
        if self.resuming is None and not self.ended.is_set():
            self.resuming = self._spawn(self._auto_resume())

    async def _auto_resume(self) -> None:
        try:
            await self.resume()
        except Exception:
            self.ended.set()  # given up: the session is over for this client
        finally:
            self.resuming = None
            # the new connection's silence counts from its first media (ICE and DTLS first)
            self.last_media_at, self._resumed_at = None, time.monotonic()

    async def resume(self, attempts: int = RESUME_ATTEMPTS, retry_s: float = RESUME_RETRY_S) -> dict[str, Any]:
        """Offer again for this session, with its key, on a new peer connection with the same
        sources: after the server's media process died (its handler, held by its worker,
        goes on) or a network change. Returns the answer; OfferRejected on a 403 or 404 (a
        wrong key, a session that ended or whose grace is over), or once the attempts run out."""
        old = self.pc
        old.remove_all_listeners()
        for sender in old.getSenders():
            sender.replaceTrack(None)  # the sources go on in the new one: aiortc stops a sender's track as it ends
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("text")
        self._wire(self.pc, self.channel)
        try:
            return await self._offer_again(attempts, retry_s)
        finally:
            # after the server took the new one: closing the old first would tell a server
            # that still holds it (a network change) that the client hung up
            with contextlib.suppress(Exception):
                await old.close()

    async def _offer_again(self, attempts: int, retry_s: float) -> dict[str, Any]:
        self._add_media()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body: dict[str, Any] = {
            "sdp": self.pc.localDescription.sdp, "type": "offer", "webrtc_id": self.webrtc_id, "session_key": self.session_key,
        }  # fmt: skip
        if self.stream_id is not None:
            body["stream_id"] = self.stream_id
        status, answer = 0, None
        async with httpx.AsyncClient(timeout=OFFER_TIMEOUT_S) as http:
            for attempt in range(attempts):
                if attempt:
                    await asyncio.sleep(retry_s)
                try:
                    resp = await http.post(f"{self.url}/webrtc/offer", json=body, headers=self.headers)
                except httpx.HTTPError as exc:
                    status, answer = 0, {"error": "unreachable", "message": str(exc)}
                    continue
                status, answer = resp.status_code, _json_of(resp)
                if status == 200 and isinstance(answer, dict) and "sdp" in answer:
                    await self._apply_answer(answer)
                    self.resumes += 1
                    return answer
                if status in RESUME_GIVE_UP:
                    break
        raise OfferRejected(status, answer)

    async def _wait_turn(self, http: httpx.AsyncClient) -> None:
        """Follow this client's place in line (GET /webrtc/queue, server-sent events) until
        it is admitted; QueueDropped if the line lets it go. Cancelling this (or the task
        that connects) closes the stream, which takes the client out of the line."""
        assert self.ticket is not None
        headers = {**self.headers, "X-Queue-Ticket": self.ticket}
        params = {"webrtc_id": self.webrtc_id}
        for _ in range(QUEUE_FOLLOW_ATTEMPTS):
            # a stream that ends with no last word (its gateway drained or restarted) is
            # followed again: the place is the scheduler's, not the gateway's
            with contextlib.suppress(httpx.TransportError):
                async with http.stream("GET", f"{self.url}/webrtc/queue", params=params, headers=headers, timeout=httpx.Timeout(OFFER_TIMEOUT_S, read=None)) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        raise OfferRejected(resp.status_code, _json_of(resp))
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        view = json.loads(line[len("data: ") :])
                        self.queue_views.append(view)
                        if view["state"] == "admitted":
                            return
                        if view["state"] == "gone":
                            raise QueueDropped(view)
            await asyncio.sleep(QUEUE_FOLLOW_RETRY_S)
        raise QueueDropped({"state": "gone", "reason": "stream_closed", "message": "the updates stream kept ending"})

    async def leave_queue(self) -> bool:
        """Leave the line now (POST /webrtc/queue/leave); False if not in one."""
        if self.ticket is None:
            return False
        async with httpx.AsyncClient(timeout=OFFER_TIMEOUT_S) as http:
            resp = await http.post(f"{self.url}/webrtc/queue/leave", json={"webrtc_id": self.webrtc_id, "ticket": self.ticket}, headers=self.headers)
        return resp.status_code == 200

    def ids(self, **body: Any) -> dict[str, Any]:
        """A request body about this session: its webrtc_id and key, and ``body``."""
        return {"webrtc_id": self.webrtc_id, "session_key": self.session_key, **body}

    async def post(self, route: str, **body: Any) -> httpx.Response:
        """POST /webrtc/<route> about this session (input, close), with its key."""
        async with httpx.AsyncClient(timeout=OFFER_TIMEOUT_S) as http:
            return await http.post(f"{self.url}/webrtc/{route}", json=self.ids(**body), headers=self.headers)

    async def hang_up(self) -> None:
        """Tell the server this client ended the session (POST /webrtc/close), then close."""
        with contextlib.suppress(httpx.HTTPError):
            await self.post("close")
        await self.close()

    def send(self, type_: str, data: Any = None) -> None:
        self.channel.send(json.dumps({"type": type_, "data": data}))

    async def wait_message(self, type_: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if m.get("type") == type_:
                    return m
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {type_!r} message within {timeout} s; got {self.messages}")

    async def close(self) -> Report:
        if self._started is not None:
            self.report.seconds = time.monotonic() - self._started
        if self.source is not None:
            self.report.sent = self.source.count
            self.source.stop()
        if self.audio_source is not None:
            self.audio_source.stop()
        for task in list(self._tasks):
            task.cancel()
        await self.pc.close()
        return self.report


async def run(url: str, seconds: float, streams: int = 1, **kw: Any) -> list[Report]:
    """Open ``streams`` sessions, stream for ``seconds``, close, return their reports."""
    clients = [Client(url, **kw) for _ in range(streams)]
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.wait_for(asyncio.gather(*(c.first_frame.wait() for c in clients)), OFFER_TIMEOUT_S)
    for c in clients:  # measure the steady state, not the start-up
        # reset in place: the receiving task holds this object
        vars(c.report).update(vars(Report()))
        c._started = time.monotonic()
        if c.source is not None:
            c.source.sent_at.clear()
    start_counts = [c.source.count if c.source else 0 for c in clients]
    await asyncio.sleep(seconds)
    reports = []
    for c, n0 in zip(clients, start_counts, strict=False):
        r = await c.close()
        r.sent -= n0
        reports.append(r)
    return reports


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--fps", type=float, default=DEFAULT_FPS)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--stream-id", default=None)
    ap.add_argument("--codec", choices=[c.value for c in VideoCodec], default=None, help="offer this video codec alone (default: both; the server picks)")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    reports = asyncio.run(run(args.url, args.seconds, args.streams, fps=args.fps, size=(w, h), stream_id=args.stream_id, codec=args.codec))
    for i, r in enumerate(reports):
        print(json.dumps({"stream": i, **r.as_dict()}))


if __name__ == "__main__":
    main()
