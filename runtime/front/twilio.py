"""Twilio phone calls: the voice webhook, its signature, the call tokens.

  POST /telephone/incoming  Twilio's voice webhook: TwiML that connects the call to
  WS   /telephone/handler   Twilio Media Streams (runtime/front/websocket_routes.py)

Twilio cannot send our credentials, so a call is admitted by a single-use call token that
``/telephone/incoming`` puts in the TwiML's stream parameters, and ``/telephone/incoming``
itself, with the Twilio auth token set (``telephone.twilio_auth_token_env``), takes only
requests that carry Twilio's signature (X-Twilio-Signature). Without that token it takes
unsigned webhooks only while ``gateway.auth.mode`` is ``none`` (and no Gradio login guards
the routes): with auth on, phone calls
are off until the token is set (a call must not be the way around gateway.auth), as a line
at start-up says. The webhook is rate-limited per client address and its body bounded
before it is read; outstanding call tokens are bounded per address and in all, and an
announced call's token is never dropped to make room.
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

from runtime.config import Config
from runtime.errors import ErrorCode, Refused
from runtime.front.api import GatewayAPI
from runtime.front.http_util import endpoint, read_body
from runtime.guard.auth import gradio_app_of, gradio_auth_enabled
from runtime.guard.limits import AddressLimits, client_key
from runtime.guard.socket_limits import MAX_CALL_TOKENS_PER_ADDRESS

log = logging.getLogger("rtcpool.websocket")

TELEPHONE_INCOMING_ROUTE = "/telephone/incoming"
TELEPHONE_HANDLER_ROUTE = "/telephone/handler"

MAX_WEBHOOK_BYTES = 64 * 1024  # a webhook's form is well under 1 kB; far larger is refused
MAX_WEBHOOK_FIELDS = 200  # form fields parsed at most (Twilio sends ~20)
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"  # what Twilio posts
CALL_TOKEN_TTL_S = 60.0  # between Twilio fetching the TwiML and opening the media stream
CALL_TOKEN_BYTES = 24
# outstanding (minted, not yet spent, not expired) call tokens kept at most; past it a new
# call is refused (429), never an announced one forgotten
MAX_CALL_TOKENS = 10_000
CALL_TOKENS_RETRY_AFTER_S = 5  # a call token is spent within a second or two of its TwiML
CALL_TOKEN_PARAM = "rtcpool_call"
UNBOUNDED_HOLDS = 10**9  # the webhook rate limiter (an AddressLimits) holds nothing: only its rate counts
STREAM_PARAM = "stream_id"  # /telephone/incoming?stream_id=...: the stream a number's calls reach

HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


class CallTokens:
    """Single-use tokens that tie a Twilio media stream to the webhook that announced it,
    and to the stream event that webhook named (None: the app's only one).

    Bounded without forgetting an announced call: at most ``max_per_address`` outstanding
    per client address that asked for them (IPv6: per /64), at most ``max_tokens`` in all;
    past either, :meth:`mint` refuses (429). A token lives ``CALL_TOKEN_TTL_S``; every token
    has the same lifetime, so the oldest are first in the dict and expire first."""

    def __init__(
        self,
        max_per_address: int = MAX_CALL_TOKENS_PER_ADDRESS,
        max_tokens: int = MAX_CALL_TOKENS,
        *,
        exempt_loopback: bool = False,
        ttl_s: float = CALL_TOKEN_TTL_S,
    ) -> None:
        self.max_per_address = max_per_address
        self.max_tokens = max_tokens
        self.exempt_loopback = exempt_loopback
        self.ttl_s = ttl_s
        # token -> (expiry, stream id, the address it is counted against; None: not counted)
        self._tokens: dict[str, tuple[float, str | None, str | None]] = {}
        self._per_address: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Config) -> CallTokens:
        """From a Config: ``telephone.max_call_tokens_per_address``, ``gateway.limits.exempt_loopback``."""
        return cls(config.telephone.max_call_tokens_per_address, exempt_loopback=config.gateway.limits.exempt_loopback)

    def __len__(self) -> int:
        return len(self._tokens)

    def outstanding(self, address: str | None) -> int:
        return self._per_address.get(client_key(address).key, 0)

    def mint(self, stream_id: str | None, address: str | None = None) -> str:
        now = time.monotonic()
        self._expire(now)
        ck = client_key(address)
        key = None if ck.loopback and self.exempt_loopback else ck.key
        if key is not None and self._per_address.get(key, 0) >= self.max_per_address:
            raise Refused(
                ErrorCode.TOO_MANY_CALL_TOKENS,
                f"at most {self.max_per_address} calls may be connecting per client address",
                retry_after_s=CALL_TOKENS_RETRY_AFTER_S,
                meta={"limit": self.max_per_address},
            )
        if len(self._tokens) >= self.max_tokens:
            raise Refused(
                ErrorCode.TOO_MANY_CALL_TOKENS,
                f"at most {self.max_tokens} calls may be connecting at once",
                retry_after_s=CALL_TOKENS_RETRY_AFTER_S,
                meta={"limit": self.max_tokens},
            )
        token = secrets.token_urlsafe(CALL_TOKEN_BYTES)
        self._tokens[token] = (now + self.ttl_s, stream_id, key)
        if key is not None:
            self._per_address[key] = self._per_address.get(key, 0) + 1
        return token

    def spend(self, token: Any) -> tuple[bool, str | None]:
        """(whether it was a live token, the stream it was minted for)"""
        if not isinstance(token, str):
            return False, None
        got = self._tokens.pop(token, None)
        if got is None:
            return False, None
        expiry, stream_id, key = got
        self._uncount(key)
        return expiry >= time.monotonic(), stream_id

    def _expire(self, now: float) -> None:
        while self._tokens:
            token, (expiry, _, key) = next(iter(self._tokens.items()))
            if expiry >= now:
                return
            del self._tokens[token]
            self._uncount(key)

    def _uncount(self, key: str | None) -> None:
        if key is None:
            return
        left = self._per_address.get(key, 0) - 1
        if left > 0:
            self._per_address[key] = left
        else:
            self._per_address.pop(key, None)


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


def twilio_token(config: Config) -> str:
    """The Twilio auth token from ``telephone.twilio_auth_token_env``'s variable ("": unset);
    read per request, so setting it needs no restart of a process that reads its env anew."""
    env = config.telephone.twilio_auth_token_env
    return os.environ.get(env, "") if env else ""


def unsigned_refused(config: Config, request: Request | None = None) -> bool:
    """Whether an unsigned webhook is refused: with ``gateway.auth`` on, or the routes on a
    Gradio app launched with ``auth=`` (which the signalling routes then take, whatever the
    mode), a call must not be the way around it, and only Twilio's signature can vouch for
    a webhook (Twilio cannot send our credentials)."""
    if config.gateway.auth.mode != "none":
        return True
    app = gradio_app_of(request) if request is not None else None
    return app is not None and gradio_auth_enabled(app)


def log_webhook_mode(config: Config) -> None:
    """One start-up line when ``/telephone/incoming`` cannot check Twilio's signatures."""
    if twilio_token(config):
        return
    env = config.telephone.twilio_auth_token_env or "telephone.twilio_auth_token_env"
    if unsigned_refused(config):
        log.info(
            "phone calls are off: %s refuses unsigned webhooks (gateway.auth.mode is %s); set %s to the "
            "Twilio auth token to take calls Twilio signed",
            TELEPHONE_INCOMING_ROUTE, config.gateway.auth.mode, env,
        )  # fmt: skip
    else:
        log.warning(
            "%s takes unsigned requests: anyone who finds it can place calls to this app's handlers "
            "(set %s to the Twilio auth token to check Twilio's signatures)",
            TELEPHONE_INCOMING_ROUTE, env,
        )  # fmt: skip


async def read_form(request: Request, limit: int = MAX_WEBHOOK_BYTES) -> dict[str, str]:
    """The webhook's form fields, its body read with a bound: Content-Length first, then a
    streamed read that stops at ``limit`` (413). No body (or none declared) is no fields."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if not body:
        return {}
    if ctype != FORM_CONTENT_TYPE:
        raise Refused(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"send the webhook's fields as {FORM_CONTENT_TYPE}")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_WEBHOOK_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise Refused(ErrorCode.BAD_REQUEST, f"the webhook's body is not a form of at most {MAX_WEBHOOK_FIELDS} fields") from None
    return dict(pairs)


class TelephoneWebhook:
    """``POST /telephone/incoming`` for one app. In order, each before it costs more: the
    address's webhook rate, the declared size, the unsigned refusal (auth on, no Twilio
    token), the bounded body, the signature, the stream, the address's call tokens."""

    def __init__(self, config: Config) -> None:
        tc, lc = config.telephone, config.gateway.limits
        # a per-address rate and nothing held: AddressLimits' offer rate, with its memory bound
        self.rate = AddressLimits(
            UNBOUNDED_HOLDS, UNBOUNDED_HOLDS, tc.webhooks_per_address_per_min,
            exempt_loopback=lc.exempt_loopback, max_tracked=lc.max_tracked_addresses,
        )  # fmt: skip

    def _charge(self, client: str | None) -> None:
        try:
            self.rate.admit_offer(client).ended()
        except Refused as ref:
            raise Refused(
                ErrorCode.WEBHOOK_RATE_LIMITED,
                f"at most {self.rate.offers_per_min} webhooks per minute per client address",
                retry_after_s=ref.retry_after_s,
                meta={"limit": self.rate.offers_per_min},
            ) from None

    async def __call__(self, gw: GatewayAPI, request: Request) -> Response:
        config = gw.config
        tc = config.telephone
        client = request.client.host if request.client else None
        self._charge(client)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_WEBHOOK_BYTES):
            raise Refused(ErrorCode.BODY_TOO_LARGE, f"the webhook body is over {MAX_WEBHOOK_BYTES} bytes")
        token = twilio_token(config)
        if not token and unsigned_refused(config, request):
            raise Refused(
                ErrorCode.UNSIGNED_WEBHOOK,
                f"phone calls are off: gateway.auth is on and the server has no Twilio auth token to check "
                f"this webhook's signature with (${tc.twilio_auth_token_env or 'telephone.twilio_auth_token_env'})",
            )
        form = await read_form(request)
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
        xml = twiml(stream_url(request, tc.public_url), gw.call_tokens.mint(stream_id, client), tc.greeting)
        return Response(xml, media_type="application/xml")


def mount_twilio_webhook(app: Any, gw: GatewayAPI) -> None:
    """Add ``POST /telephone/incoming`` to a FastAPI app."""
    incoming = TelephoneWebhook(gw.config)
    route = endpoint(gw, incoming.__call__)
    route.__name__ = route.__qualname__ = "telephone_incoming"
    app.add_api_route(TELEPHONE_INCOMING_ROUTE, route, methods=["POST"])


__all__ = [
    "CallTokens",
    "log_webhook_mode",
    "mount_twilio_webhook",
    "signature_matches",
    "twiml",
    "twilio_signature",
    "CALL_TOKEN_PARAM",
    "TELEPHONE_HANDLER_ROUTE",
    "TELEPHONE_INCOMING_ROUTE",
]
