"""Twilio phone calls: the voice webhook, its signature, the call tokens.

  POST /telephone/incoming  Twilio's voice webhook: TwiML that connects the call to
  WS   /telephone/handler   Twilio Media Streams (runtime/front/websocket_routes.py)

Twilio cannot send our credentials, so a call is admitted by a single-use call token that
``/telephone/incoming`` puts in the TwiML's stream parameters, and ``/telephone/incoming``
itself, with ``telephone.twilio_auth_token`` set, takes only requests that carry Twilio's
signature (X-Twilio-Signature).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import urllib.parse
from typing import Any
from xml.etree import ElementTree

from fastapi import Request
from fastapi.responses import Response

from runtime.errors import ErrorCode, Refused
from runtime.front.api import GatewayAPI
from runtime.front.http_util import endpoint

log = logging.getLogger("rtcpool.websocket")

TELEPHONE_INCOMING_ROUTE = "/telephone/incoming"
TELEPHONE_HANDLER_ROUTE = "/telephone/handler"

MAX_WEBHOOK_BYTES = 64 * 1024  # a webhook's form is well under 1 kB; far larger is refused
CALL_TOKEN_TTL_S = 60.0  # between Twilio fetching the TwiML and opening the media stream
CALL_TOKEN_BYTES = 24
MAX_CALL_TOKENS = (
    10_000  # outstanding call tokens kept at most (a webhook flood forgets the oldest)
)
CALL_TOKEN_PARAM = "rtcpool_call"
STREAM_PARAM = "stream_id"  # /telephone/incoming?stream_id=...: the stream a number's calls reach

HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


class CallTokens:
    """Single-use tokens that tie a Twilio media stream to the webhook that announced it,
    and to the stream event that webhook named (None: the app's only one)."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[float, str | None]] = {}  # token -> (expiry, stream id)

    def mint(self, stream_id: str | None) -> str:
        now = time.monotonic()
        for token in [t for t, (exp, _) in self._tokens.items() if exp < now]:
            del self._tokens[token]
        while len(self._tokens) >= MAX_CALL_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        token = secrets.token_urlsafe(CALL_TOKEN_BYTES)
        self._tokens[token] = (now + CALL_TOKEN_TTL_S, stream_id)
        return token

    def spend(self, token: Any) -> tuple[bool, str | None]:
        """(whether it was a live token, the stream it was minted for)"""
        if not isinstance(token, str):
            return False, None
        expiry, stream_id = self._tokens.pop(token, (0.0, None))
        return expiry >= time.monotonic(), stream_id


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's request signature: HMAC-SHA1 over the URL and the sorted form fields."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(
        hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    ).decode()


def signature_matches(auth_token: str, given: str, url: str, params: dict[str, str]) -> bool:
    """Whether ``given`` is Twilio's signature of the request, for the URL as it came or
    with its default port added or dropped (a proxy on the way may do either)."""
    parts = urllib.parse.urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    if default is not None and parts.hostname:
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        bare = parts._replace(netloc=host).geturl()
        with_port = parts._replace(netloc=f"{host}:{default}").geturl()
        variants += [bare] if parts.port == default else [with_port] if parts.port is None else []
    return any(hmac.compare_digest(given.encode(), twilio_signature(auth_token, v, params).encode()) for v in variants)


def twiml(stream_url: str, token: str, greeting: str) -> str:
    """<Response><Say/><Connect><Stream url><Parameter/></Stream></Connect></Response>"""
    response = ElementTree.Element("Response")
    if greeting:
        ElementTree.SubElement(response, "Say").text = greeting
    connect = ElementTree.SubElement(response, "Connect")
    stream = ElementTree.SubElement(connect, "Stream", url=stream_url)
    ElementTree.SubElement(stream, "Parameter", name=CALL_TOKEN_PARAM, value=token)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ElementTree.tostring(
        response, encoding="unicode"
    )


def stream_url(request: Any, public_url: str | None) -> str:
    """Where Twilio opens the media stream: ``telephone.public_url`` (behind a proxy that
    rewrites Host), else this request's Host, which is checked to be a plain host name."""
    if public_url:
        base = public_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + TELEPHONE_HANDLER_ROUTE
    host = request.headers.get("host", "")
    if not HOST_RE.fullmatch(host):
        raise Refused(ErrorCode.BAD_HOST, "the request's Host header is not a host name")
    prefix = request.url.path.removesuffix(TELEPHONE_INCOMING_ROUTE)
    return f"wss://{host}{prefix}{TELEPHONE_HANDLER_ROUTE}"


class TelephoneWebhook:
    """``POST /telephone/incoming`` for one app: said once, at the first unsigned webhook,
    that it takes unsigned ones."""

    def __init__(self) -> None:
        self.warned_unsigned = False

    async def __call__(self, gw: GatewayAPI, request: Request) -> Response:
        tc = gw.config.telephone
        body = await request.body()
        if len(body) > MAX_WEBHOOK_BYTES:
            raise Refused(
                ErrorCode.BODY_TOO_LARGE, f"the webhook body is over {MAX_WEBHOOK_BYTES} bytes"
            )
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        token = os.environ.get(tc.twilio_auth_token_env, "") if tc.twilio_auth_token_env else ""
        if not token and not self.warned_unsigned:
            self.warned_unsigned = True
            log.warning(
                "%s takes unsigned requests: anyone who finds it can place calls to this app's handlers "
                "(set %s to the Twilio auth token to check Twilio's signatures)",
                TELEPHONE_INCOMING_ROUTE, tc.twilio_auth_token_env or "telephone.twilio_auth_token_env",
            )  # fmt: skip
        if token:
            # Twilio signs the URL it was configured with: the public one behind a proxy
            url = (
                (tc.public_url.rstrip("/") + TELEPHONE_INCOMING_ROUTE)
                if tc.public_url
                else str(request.url)
            )
            if not signature_matches(token, request.headers.get("x-twilio-signature", ""), url, form):
                raise Refused(
                    ErrorCode.BAD_TWILIO_SIGNATURE,
                    "the request is not signed by Twilio for this URL",
                )
        stream_id = request.query_params.get(STREAM_PARAM)
        if stream_id is not None:
            gw.pick_event(stream_id)  # 404 now rather than when the call connects
        xml = twiml(stream_url(request, tc.public_url), gw.call_tokens.mint(stream_id), tc.greeting)
        return Response(xml, media_type="application/xml")


def mount_twilio_webhook(app: Any, gw: GatewayAPI) -> None:
    """Add ``POST /telephone/incoming`` to a FastAPI app."""
    incoming = TelephoneWebhook()
    route = endpoint(gw, incoming.__call__)
    route.__name__ = route.__qualname__ = "telephone_incoming"
    app.add_api_route(TELEPHONE_INCOMING_ROUTE, route, methods=["POST"])


__all__ = [
    "CallTokens",
    "mount_twilio_webhook",
    "signature_matches",
    "twiml",
    "twilio_signature",
    "CALL_TOKEN_PARAM",
    "TELEPHONE_HANDLER_ROUTE",
    "TELEPHONE_INCOMING_ROUTE",
]
