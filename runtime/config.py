"""Deployment configuration: one YAML file, validated by pydantic.

Precedence: the file, then ``RTCPOOL_*`` environment variables, then CLI flags (``rtcpool
serve`` hands them to the app's :func:`load_config` as JSON in ``RTCPOOL_CLI_OVERRIDES``).
Types are strict (YAML already gives numbers and booleans; a quoted ``"8000"`` is not a
port), unknown keys are errors, and every error names its key path and where the value came
from.

Environment variables name a key path with ``__`` between levels, e.g.
``RTCPOOL_GATEWAY__PORT=8000`` or ``RTCPOOL_RAY__ADDRESS=auto``; values are parsed as YAML
scalars or lists (``RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES='[127.0.0.1]'``). Key names are
case-insensitive; a stream id keeps its case (``RTCPOOL_STREAMS__myStream__TIME_LIMIT=30``).

``streams.<id>.pool`` inherits every key it does not set from the top-level ``pool``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from runtime import constants as C
from runtime.guard.auth import BEARER_TOKENS_ENV, JOIN_SECRET_ENV, AuthConfig, SignallingAuth
from runtime.guard.budgets import BudgetsConfig
from runtime.guard.hosts import HostAllowList, default_hosts, normalize_host_pattern
from runtime.guard.http_limits import HttpLimitsConfig
from runtime.guard.limits import LimitsConfig
from runtime.guard.socket_limits import (
    MAX_CALL_TOKENS_PER_ADDRESS,
    MAX_QUEUE_STREAMS_PER_ADDRESS,
    MAX_QUEUE_STREAMS_PER_TICKET,
    WEBHOOKS_PER_ADDRESS_PER_MIN,
    SocketsConfig,
)
from workers.process.loader import WORKER_IMPORT_ENV

# The embedded default ships inside the package, so that an installed wheel (which has no
# checkout's configs/ folder) finds it; configs/local.yaml in a checkout is a link to it.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "local.yaml"
ENV_PREFIX = "RTCPOOL_"
CONFIG_ENV = "RTCPOOL_CONFIG"  # path of the config file when none is given
CLI_OVERRIDES_ENV = "RTCPOOL_CLI_OVERRIDES"  # JSON of the `rtcpool serve` flags; beats the env
# RTCPOOL_* names that are not key paths: a name outside these and without "__" is a typo
# (RTCPOOL_GATEWAY_PORT), and a typo that is silently ignored is a setting that never applies
OWN_ENV_NAMES = (CONFIG_ENV, CLI_OVERRIDES_ENV, WORKER_IMPORT_ENV, C.RUN_DIR_ENV, JOIN_SECRET_ENV, BEARER_TOKENS_ENV)
RESOURCE_PRECISION = 1e-4  # Ray schedules resource quantities in units of 1/10,000
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # keys of their own in Ray
_RESERVED_KEY = {"CPU": "num_cpus", "GPU": "num_gpus", "object_store_memory": "memory"}
# "auto", "local", host:port, ray://host:port (a host may be a bracketed IPv6 address); the
# port's range is checked apart, so that the error can say what is wrong with it
RAY_ADDRESS_RE = re.compile(
    r"^(auto|local|(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5}))$"
)
SHOWN_INPUT_CHARS = 60  # a bad value is quoted in the error up to this length


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_quantity(value: float | None) -> float | None:
    """Ray's rule for a resource request, checked here so that a bad one fails at config
    time, not as a worker that never starts: at most 4 decimals."""
    if value and abs(value / RESOURCE_PRECISION - round(value / RESOURCE_PRECISION)) > 1e-6:
        raise ValueError(f"{value} is finer than Ray's resource precision of {RESOURCE_PRECISION}")
    return value


def _check_gpus(value: float | None) -> float | None:
    # Ray shares a GPU only below one: 0.25 is a quarter of one GPU, 1.5 is never placed
    if value is not None and value > 1 and value != int(value):
        raise ValueError(
            f"{value} GPUs: a request above 1 must be a whole number (a fraction shares one GPU)"
        )
    return _check_quantity(value)


def _check_resource_name(name: str) -> str:
    if name in RESERVED_RESOURCES:
        raise ValueError(f"{name!r} has a key of its own: use pool.{_RESERVED_KEY.get(name, name)}")
    return name


def _check_ip(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(
            f"{address!r} is not an IP address (ICE host candidates are addresses, not names)"
        ) from None
    return address


IPAddress = Annotated[str, AfterValidator(_check_ip)]
ResourceName = Annotated[str, Field(min_length=1), AfterValidator(_check_resource_name)]
Quantity = Annotated[float, Field(ge=0), AfterValidator(_check_quantity)]


class IceServer(_Strict):
    urls: list[str] = Field(
        min_length=1, description="one URL or a list, as in the browser's RTCIceServer"
    )
    username: str | None = None
    credential: str | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # a plain list, not `str | list[str]`: a union's errors would name each of its branches
        return [value] if isinstance(value, str) else value


class RayConfig(_Strict):
    address: str | None = Field(
        None,
        description=(
            "None or 'local': start a new Ray in this process (never one found through "
            "RAY_ADDRESS or a `ray start` on this host); 'auto', 'host:port' or "
            "'ray://host:port': join a cluster"
        ),
    )
    namespace: str = Field(C.RAY_NAMESPACE, min_length=1)
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the embedded local Ray (None: all)"
    )
    include_dashboard: bool = False
    detached_scheduler: bool = Field(
        False, description="keep the scheduler alive when this gateway exits (several gateways)"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        match = RAY_ADDRESS_RE.match(value) if value is not None else None
        if value is not None and not match:
            raise ValueError(
                f"{value!r} is not a Ray address: use 'auto', 'host:port' or 'ray://host:port'"
            )
        port = match.group("port") if match else None
        if port is not None and not 1 <= int(port) <= C.MAX_PORT:
            raise ValueError(f"{value!r}: port {int(port)} is not between 1 and {C.MAX_PORT}")
        return value

    @field_validator("num_cpus")
    @classmethod
    def _num_cpus(cls, value: int | None, info: ValidationInfo) -> int | None:
        # ray.init refuses num_cpus when it joins a cluster: each node declares its own
        if value is not None and info.data.get("address") not in (None, "local"):
            raise ValueError(
                "only for the embedded local Ray: a joined cluster's nodes declare their CPUs (ray start --num-cpus)"
            )
        return value

    @property
    def embedded(self) -> bool:
        """Ray runs inside this process on this host only (no cluster to join)."""
        return self.address in (None, "local")

    def init_kwargs(self) -> dict[str, Any]:
        """The ``ray.init`` arguments for this config. The embedded default passes
        ``address="local"``: with no address, Ray itself joins whatever RAY_ADDRESS names or
        the latest ``ray start`` on this host, so a laptop with a cluster node running would
        silently serve from that cluster."""
        kwargs: dict[str, Any] = {
            "address": "local" if self.embedded else self.address,
            "namespace": self.namespace,
            "include_dashboard": self.include_dashboard,
        }
        if self.embedded and self.num_cpus is not None:
            kwargs["num_cpus"] = self.num_cpus
        return kwargs


def _check_processes(value: Any) -> Any:
    """``gateway.processes``: "auto" or a whole number 1-MAX_MEDIA_PROCESSES (one message,
    not pydantic's one per member of the union)."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # from RTCPOOL_GATEWAY__PROCESSES or --set
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= C.MAX_MEDIA_PROCESSES:
        raise ValueError(f"must be 'auto' or a whole number of media processes from 1 to {C.MAX_MEDIA_PROCESSES}, got {value!r}")
    return value


class GatewayConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(7860, ge=0, le=65535)
    processes: Annotated[int | Literal["auto"], BeforeValidator(_check_processes)] = Field(
        "auto",
        description=(
            "media processes on this host: 1 = the app's own process carries media (as on a "
            "laptop); N >= 2 = N media processes beside it, the app's process keeps signalling; "
            "auto = 1 below 4 cores, else one per 2 cores (at least 2)"
        ),
    )
    ice_servers: list[IceServer] = Field(default_factory=list)
    ice_host_addresses: list[IPAddress] = Field(
        default_factory=list,
        description="addresses offered as ICE host candidates; empty: every interface but loopback",
    )
    connect_timeout_s: float = Field(C.CONNECT_TIMEOUT_S, gt=0)
    media_inactivity_timeout_s: float = Field(C.MEDIA_INACTIVITY_TIMEOUT_S, gt=0)
    resume_grace_s: float = Field(
        C.RESUME_GRACE_S,
        ge=0,
        description="a session whose media process died keeps its worker (handler state and all) this long for its "
        "client to re-offer with its session_key (docs/failover.md); 0: it ends at once",
    )
    max_offer_bytes: int = Field(C.MAX_OFFER_BYTES, gt=0)
    max_frame_pixels: int = Field(C.MAX_FRAME_PIXELS, gt=0)
    drain_timeout_s: float = Field(
        C.DRAIN_TIMEOUT_S,
        ge=0,
        description="on SIGTERM (or rtcpool drain), how long live sessions may run before they are ended",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="what one client may make the gateway hold")
    budgets: BudgetsConfig = Field(
        default_factory=BudgetsConfig,
        description="what one session's media (in real-time units) and data channel may cost",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="who may use the signalling routes")
    http: HttpLimitsConfig = Field(
        default_factory=HttpLimitsConfig,
        description="the HTTP server's connection bounds under rtcpool serve (header timeout, connections, message sizes)",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description=(
            "browser origins whose pages may use the signalling routes (scheme://host[:port], '*' for "
            "any); empty: the app's own origin and localhost/127.0.0.1/[::1] on any port"
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "names (Host header) the server may be addressed by, besides IP addresses, localhost, "
            "a gateway.host that is a name and telephone.public_url's host: example.com, "
            ".example.com (and subdomains), '*' (any: no DNS-rebinding check)"
        ),
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="rtcpool's log lines on stderr: text, or one JSON object per line for log shippers",
    )
    require_session_key: bool = Field(
        True,
        description=(
            "every request about a session (candidates, input, close, outputs) must carry the key "
            "the offer's answer gave (session_key); false lets fastrtc-style clients, which send "
            "only their webrtc_id, work: then anyone who learns an id can use that session"
        ),
    )
    transport: Literal["auto", "shm", "tcp"] = Field(
        "auto",
        description="gateway <-> worker link: auto = shared memory when the worker is on this node, TCP otherwise",
    )
    video_release_on_marker: bool = Field(
        True,
        description="decode a video frame when its last (RTP marker) packet arrives, not one frame later as aiortc does",
    )
    audio_jitter_prefetch: int = Field(
        C.AUDIO_JITTER_PREFETCH,
        ge=0,
        le=15,
        description="20 ms audio packets aiortc waits for before decoding; 1 suits loopback/LAN, 4 (aiortc's) the internet",
    )
    vp8_speed: int = Field(
        C.VP8_SPEED,
        ge=0,
        le=16,
        description="libvpx speed of the gateway's VP8 encoder (runtime/media/vp8_encoder.py): 6 is aiortc's; higher is faster and worse",
    )
    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        return AuthConfig(allowed_origins=value).allowed_origins  # normalised, or a clear error

    @model_validator(mode="after")
    def _one_origin_list(self) -> GatewayConfig:
        if self.auth.allowed_origins:
            raise ValueError("set the origin allow-list as gateway.allowed_origins, not gateway.auth.allowed_origins")
        return self

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        return [normalize_host_pattern(item) for item in value]  # or a clear error

    def signalling_auth(self, public_url: str | None = None) -> SignallingAuth:
        """The check in front of the signalling routes (reads the secrets' environment);
        ``public_url``: telephone.public_url, whose host is allowed too."""
        hosts = HostAllowList([*self.allowed_hosts, *default_hosts(self.host, public_url)])
        return SignallingAuth(self.auth.model_copy(update={"allowed_origins": self.allowed_origins}), hosts=hosts)

    def media_processes(self, cores: int | None = None) -> int:
        """``processes`` as a count: ``auto`` reads this host's cores (see media_processes_for)."""
        if self.processes != "auto":
            return self.processes
        return media_processes_for(cores if cores is not None else (os.cpu_count() or 1))

    video_codecs: list[Literal["h264", "vp8"]] = Field(
        list(C.VIDEO_CODECS),
        min_length=1,
        max_length=2,
        description=(
            "video codecs a session may speak, in order: the answer picks the first the offer lists, "
            "for both directions (H.264: constrained baseline or baseline, packetization mode 1)"
        ),
    )
    h264_encoder: Literal["libx264", "h264_nvenc", "h264_qsv", "h264_amf", "h264_v4l2m2m"] = Field(
        C.H264_ENCODER,
        description="FFmpeg encoder for H.264 (runtime/media/h264_encoder.py): a hardware one falls back to libx264, with a warning, where it is absent or will not open",
    )

    @field_validator("video_codecs")
    @classmethod
    def _distinct_codecs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a codec twice")
        return value

    vp8_denoise: bool = Field(
        C.VP8_DENOISE,
        description="libvpx's temporal denoiser on the gateway's encoder: off, since it encodes processed frames, not a webcam",
    )
    shm_janitor_interval_s: float = Field(
        C.SHM_JANITOR_INTERVAL_S,
        ge=0,
        description=(
            "how often the gateway removes /dev/shm segments left by rtcpool processes that died "
            "(it also does at start-up); 0: at start-up only"
        ),
    )
    loop_stall_warn_ms: int = Field(C.LOOP_STALL_WARN_MS, ge=0, description="a media process whose event loop is held this long logs the stack holding it, once per stall, and is not ready until it runs again; 0: not watched")


def media_processes_for(cores: int) -> int:
    """What ``gateway.processes: auto`` means on a host of ``cores``: one media process per
    AUTO_CORES_PER_MEDIA_PROCESS cores (the rest is for workers and the system), at least 2;
    on a small host the app's own process alone, where a second process only adds a hop
    (measured: scripts/bench_gateway.py)."""
    if cores < C.AUTO_MEDIA_MIN_CORES:
        return 1
    return max(2, min(C.MAX_MEDIA_PROCESSES, cores // C.AUTO_CORES_PER_MEDIA_PROCESS))


class PoolConfig(_Strict):
    """Each worker actor's Ray resources (``.options(...)`` of the worker) and the pool size."""

    prewarm: int = Field(C.POOL_PREWARM, ge=0, description="idle workers kept ready")
    max_workers: int = Field(
        C.POOL_MAX,
        ge=1,
        description="workers when the stream has no concurrency_limit (else: the limit)",
    )
    num_cpus: Quantity | None = Field(
        None, description="CPUs each worker holds (None: Ray's default for actors)"
    )
    num_gpus: Annotated[float, Field(ge=0), AfterValidator(_check_gpus)] | None = Field(
        None, description="GPUs each worker holds; a fraction shares one GPU"
    )
    memory: ByteSize | None = Field(
        None, description="memory each worker reserves: bytes, or '512MiB', '2GB'"
    )
    resources: dict[ResourceName, Quantity] = Field(
        default_factory=dict,
        description="custom Ray resources each worker needs, e.g. {far_node: 1}",
    )
    spare_workers: int = Field(
        C.POOL_SPARE_WORKERS,
        ge=0,
        description="idle workers a stream with a concurrency_limit keeps beyond it, so that a session whose worker "
        "dies takes over a warm one (failover in ~0.2 s, not a cold start); each holds its resources",
    )
    snapshot_interval_s: float = Field(
        C.SNAPSHOT_INTERVAL_S,
        gt=0,
        description="a handler with snapshot() has its state sent to its media process this often "
        "(and at most this often on save_state()); a restarted worker restores the latest",
    )
    max_restarts: int = Field(
        C.MAX_RESTARTS, ge=0, description="worker restarts a session gets within restart_window_s; one more ends it"
    )
    restart_window_s: float = Field(C.RESTART_WINDOW_S, gt=0, description="the window max_restarts counts in")
    worker_memory_limit_mb: int = Field(
        C.WORKER_MEMORY_LIMIT_MB,
        ge=0,
        description="a worker whose RSS passes this (MB) hands its session to a fresh worker between frames "
        "(state saved first) and exits; 0: no limit",
    )
    max_snapshot_bytes: int = Field(
        C.MAX_SNAPSHOT_BYTES, ge=1, description="a packed snapshot larger than this is not kept (the handler is warned)"
    )

    @field_serializer("memory")
    def _memory_bytes(self, value: ByteSize | None) -> int | None:
        return None if value is None else int(value)  # a plain int for Ray's .options(memory=)


class QueueConfig(_Strict):
    """A full stream's waiting room (runtime/control/waiting_room.py), for every stream that queues
    (``.stream(queue=True)``, the default, as in Gradio)."""

    max_size: int | None = Field(
        C.QUEUE_MAX, ge=0, description="users waiting per stream at most (Gradio's max_size); beyond: 429 queue_full"
    )
    timeout_s: float | None = Field(C.QUEUE_TIMEOUT_S, gt=0, description="a user waiting longer is told and dropped")
    admit_hold_s: float = Field(
        C.QUEUE_ADMIT_HOLD_S, gt=0, description="an admitted user's slot is held this long for its offer to come back"
    )
    max_update_streams_per_ticket: int = Field(
        MAX_QUEUE_STREAMS_PER_TICKET, ge=1, description="GET /webrtc/queue streams open at once on one ticket (429 too_many_queue_streams)"
    )
    max_update_streams_per_address: int = Field(
        MAX_QUEUE_STREAMS_PER_ADDRESS,
        ge=1,
        description="GET /webrtc/queue streams open at once per client address (IPv6: per /64; 429 too_many_queue_streams); "
        "gateway.limits.exempt_loopback applies",
    )


class TelephoneConfig(_Strict):
    """Phone calls through Twilio Media Streams (runtime/front/websocket_routes.py)."""

    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="the app's public base URL (https://host[/prefix]): where Twilio is told to open the media "
        "stream and the URL its signatures are over; default: the webhook request's Host",
    )
    twilio_auth_token_env: str | None = Field(
        "TWILIO_AUTH_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding the Twilio auth token: when it is set, /telephone/incoming "
        "takes only requests Twilio signed (X-Twilio-Signature)",
    )
    greeting: str = Field("Connecting you now.", max_length=500, description="what the caller hears first (<Say>); empty: nothing")
    webhooks_per_address_per_min: int = Field(
        WEBHOOKS_PER_ADDRESS_PER_MIN,
        ge=1,
        description="/telephone/incoming posts per client address per minute (a burst of this many, then this "
        "rate; 429 webhook_rate_limited); Twilio posts from its own few addresses",
    )
    max_call_tokens_per_address: int = Field(
        MAX_CALL_TOKENS_PER_ADDRESS,
        ge=1,
        description="calls announced by /telephone/incoming and not yet connected (or expired), per client address "
        "(429 too_many_call_tokens); an announced call is never forgotten to make room",
    )


class StreamOverride(_Strict):
    concurrency_limit: int | None = Field(None, ge=1)
    time_limit: float | None = Field(None, gt=0)
    queue: bool | None = Field(None, description="whether a full stream queues users (else: 429 + Retry-After)")
    max_queue: int | None = Field(None, ge=0, description="this stream's queue.max_size")
    queue_timeout_s: float | None = Field(None, gt=0, description="this stream's queue.timeout_s")
    pool: PoolConfig | None = Field(
        None, description="this stream's pool: keys it leaves out come from the top-level pool"
    )


class Config(_Strict):
    ray: RayConfig = Field(default_factory=RayConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    telephone: TelephoneConfig = Field(default_factory=TelephoneConfig)
    sockets: SocketsConfig = Field(
        default_factory=SocketsConfig, description="WebSocket audio and phone sockets before their 'start' message"
    )
    streams: dict[str, StreamOverride] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _streams_inherit_pool(cls, data: Any) -> Any:
        """A stream's ``pool`` is the top-level pool with the stream's keys on top, so
        ``streams.x.pool: {num_gpus: 0.5}`` keeps the shared CPU, memory and pool size."""
        if not isinstance(data, dict) or not isinstance(data.get("streams"), dict):
            return data
        base: dict[str, Any] = data["pool"] if isinstance(data.get("pool"), dict) else {}
        streams = {}
        for sid, stream in data["streams"].items():
            if isinstance(stream, dict) and isinstance(stream.get("pool"), dict):
                stream = {**stream, "pool": {**base, **stream["pool"]}}
            streams[sid] = stream
        return {**data, "streams": streams}
