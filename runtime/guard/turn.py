"""TURN credentials for ``WebRTC(rtc_configuration=...)``, with gradio_webrtc's names.

A browser behind a strict NAT reaches the gateway only through a TURN relay. These return an
RTCConfiguration dict (``{"iceServers": [...]}``) for the component:

* ``get_twilio_turn_credentials()`` asks Twilio's Network Traversal Service for short-lived
  credentials (``TWILIO_ACCOUNT_SID`` / ``TWILIO_AUTH_TOKEN``, or the arguments), over its
  REST API, so the ``twilio`` package is not needed;
* ``get_hf_turn_credentials()`` asks the Hugging Face TURN service gradio_webrtc uses
  (``HF_TOKEN``);
* ``get_turn_credentials(method=...)`` picks one.

Without credentials each returns the deployment's own ``gateway.ice_servers`` (a warning says
so) instead of failing: the seed apps call these at import time, and an app tried on a laptop
or a LAN needs no relay. With credentials, a service that does not answer is an error.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import httpx

log = logging.getLogger("rtcpool.turn")

TWILIO_API_BASE = "https://api.twilio.com/2010-04-01"
HF_TURN_CREDENTIALS_URL = "https://freddyaboulton-turn-server-login.hf.space/credentials"
HF_TURN_URLS = "turn:gradio-turn.com:80"
TURN_REQUEST_TIMEOUT_S = 10.0  # one credentials request
TWILIO_SID_ENV = "TWILIO_ACCOUNT_SID"
TWILIO_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
HF_TOKEN_ENV = "HF_TOKEN"


class TurnCredentialsError(RuntimeError):
    """A TURN service was asked for credentials and did not give them."""


def configured_rtc_configuration() -> dict[str, Any]:
    """The deployment's ICE servers (config ``gateway.ice_servers``) as an RTCConfiguration."""
    from runtime.config_loader import load_config

    servers = [s.model_dump(exclude_none=True) for s in load_config().gateway.ice_servers]
    return {"iceServers": servers}


def _fallback(service: str, missing: str) -> dict[str, Any]:
    log.warning("no %s credentials (%s): using the configured gateway.ice_servers instead", service, missing)
    return configured_rtc_configuration()


def get_twilio_turn_credentials(twilio_sid: str | None = None, twilio_token: str | None = None) -> dict[str, Any]:
    """Short-lived TURN credentials from Twilio, relay-only as gradio_webrtc asks for."""
    sid = twilio_sid or os.environ.get(TWILIO_SID_ENV)
    token = twilio_token or os.environ.get(TWILIO_TOKEN_ENV)
    if not sid or not token:
        return _fallback("Twilio", f"{TWILIO_SID_ENV}, {TWILIO_TOKEN_ENV}")
    url = f"{TWILIO_API_BASE}/Accounts/{sid}/Tokens.json"
    try:
        resp = httpx.post(url, auth=(sid, token), timeout=TURN_REQUEST_TIMEOUT_S)
        resp.raise_for_status()
        servers = resp.json()["ice_servers"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise TurnCredentialsError(f"Twilio gave no TURN credentials: {exc}") from exc
    ice = []
    for server in servers:
        entry = {"urls": server.get("urls") or server.get("url")}
        for key in ("username", "credential"):
            if server.get(key):
                entry[key] = server[key]
        ice.append(entry)
    return {"iceServers": ice, "iceTransportPolicy": "relay"}


def get_hf_turn_credentials(token: str | None = None) -> dict[str, Any]:
    """TURN credentials from the Hugging Face TURN service (a Hugging Face token)."""
    token = token or os.environ.get(HF_TOKEN_ENV)
    if not token:
        return _fallback("Hugging Face", HF_TOKEN_ENV)
    try:
        resp = httpx.get(HF_TURN_CREDENTIALS_URL, headers={"X-HF-Access-Token": token}, timeout=TURN_REQUEST_TIMEOUT_S)
        resp.raise_for_status()
        credentials = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TurnCredentialsError(f"the Hugging Face TURN service gave no credentials: {exc}") from exc
    if not isinstance(credentials, dict):
        raise TurnCredentialsError(f"the Hugging Face TURN service answered {credentials!r}")
    return {"iceServers": [{"urls": HF_TURN_URLS, **credentials}]}


def get_turn_credentials(method: Literal["hf", "twilio"] = "hf", **kwargs: Any) -> dict[str, Any]:
    if method == "hf":
        return get_hf_turn_credentials(**kwargs)
    if method == "twilio":
        return get_twilio_turn_credentials(**kwargs)
    raise ValueError(f"method must be 'hf' or 'twilio', got {method!r}")


__all__ = [
    "TurnCredentialsError",
    "configured_rtc_configuration",
    "get_hf_turn_credentials",
    "get_turn_credentials",
    "get_twilio_turn_credentials",
]

TURN_API = ["get_hf_turn_credentials", "get_turn_credentials", "get_twilio_turn_credentials"]  # exported with the handler API
