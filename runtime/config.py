"""Deployment configuration: one YAML file, validated by pydantic.

Precedence: the file, then ``RTCPOOL_*`` environment variables, then CLI flags (the caller
applies those with :func:`apply_overrides`). Unknown keys are errors that name their path.

Environment variables name a key path with ``__`` between levels, e.g.
``RTCPOOL_GATEWAY__PORT=8000`` or ``RTCPOOL_RAY__ADDRESS=auto``; values are parsed as YAML
scalars or lists (``RTCPOOL_GATEWAY__ICE_HOST_ADDRESSES='[127.0.0.1]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime import constants as C

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "local.yaml"
ENV_PREFIX = "RTCPOOL_"
CONFIG_ENV = "RTCPOOL_CONFIG"  # path of the config file when none is given


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IceServer(_Strict):
    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class RayConfig(_Strict):
    address: str | None = Field(None, description="None: start Ray in this process; 'auto' or 'ray://host:port': join a cluster")
    namespace: str = C.RAY_NAMESPACE
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (None: all)")
    include_dashboard: bool = False
    detached_scheduler: bool = Field(False, description="keep the scheduler alive when this gateway exits (several gateways)")


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    ice_servers: list[IceServer] = Field(default_factory=list)
    ice_host_addresses: list[str] = Field(
        default_factory=list,
        description="addresses offered as ICE host candidates; empty: every interface but loopback",
    )
    connect_timeout_s: float = Field(C.CONNECT_TIMEOUT_S, gt=0)
    media_inactivity_timeout_s: float = Field(C.MEDIA_INACTIVITY_TIMEOUT_S, gt=0)
    max_offer_bytes: int = Field(C.MAX_OFFER_BYTES, gt=0)
    max_frame_pixels: int = Field(C.MAX_FRAME_PIXELS, gt=0)
    audio_jitter_prefetch: int = Field(
        C.AUDIO_JITTER_PREFETCH,
        ge=0,
        le=15,
        description="20 ms audio packets aiortc waits for before decoding; 1 suits loopback/LAN, 4 (aiortc's) the internet",
    )


class PoolConfig(_Strict):
    prewarm: int = Field(C.POOL_PREWARM, ge=0)
    max_workers: int = Field(C.POOL_MAX, ge=1)
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    memory: int | None = Field(None, ge=0, description="bytes of memory to reserve per worker")
    resources: dict[str, float] = Field(default_factory=dict)


class StreamOverride(_Strict):
    concurrency_limit: int | None = Field(None, ge=1)
    time_limit: float | None = Field(None, gt=0)
    pool: PoolConfig | None = None


class Config(_Strict):
    ray: RayConfig = Field(default_factory=RayConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    streams: dict[str, StreamOverride] = Field(default_factory=dict)


class ConfigError(ValueError):
    pass


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or "__" not in key:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """The effective config: file (default ``configs/local.yaml``), then env, then overrides."""
    environ = dict(os.environ) if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {source} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {source} must hold a mapping at its top level")
    data = _merge(data, _env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None
