"""Who may use the signalling routes: an Origin allow-list, then one of four modes.

* ``none`` -- anyone who reaches the port (the embedded local default);
* ``bearer`` -- ``Authorization: Bearer <token>``, one of the tokens in an environment
  variable (``gateway.auth.bearer_tokens_env``);
* ``join_token`` -- ``Authorization: Bearer <join token>``: an HMAC-SHA256-signed,
  expiring token (:func:`mint_join_token`; ``rtcpool token`` on the command line), with
  the secret in an environment variable (``gateway.auth.secret_env``), optionally bound to
  one stream and naming a subject;
* ``gradio`` -- the Gradio session of an app launched with ``auth=`` (or
  ``auth_dependency=``): the routes are protected as Gradio protects its own.

Secrets live in the environment, never in the config file. A refusal is a
:class:`runtime.errors.Refused`: 401 ``auth_required``/``bad_token``/``token_expired``,
403 ``token_wrong_stream``/``origin_not_allowed``.

Join token: ``<payload>.<signature>``, both base64url without padding; the payload is
compact JSON ``{"exp": unix seconds, "n": nonce, "st": stream id, "sub": subject, "v": 1}``
(``st`` and ``sub`` optional); the signature is HMAC-SHA256 over a context string and the
payload's base64 text, so the bytes verified are the bytes received.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import ipaddress
import json
import math
import os
import re
import secrets
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.errors import ErrorCode, Refused
from runtime.guard.hosts import HostAllowList

if TYPE_CHECKING:
    from starlette.requests import Request

# --- environment ------------------------------------------------------------------------
JOIN_SECRET_ENV = "RTCPOOL_JOIN_SECRET"  # default gateway.auth.secret_env
BEARER_TOKENS_ENV = "RTCPOOL_BEARER_TOKENS"  # default gateway.auth.bearer_tokens_env
OPERATOR_TOKENS_ENV = "RTCPOOL_OPERATOR_TOKENS"  # default gateway.auth.operator_tokens_env
# a proxy in front says who the client is in one of these; a request carrying one is not
# "from this machine" whatever its socket's address (the operator rule below)
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
BEARER_TOKEN_SEPARATORS_RE = re.compile(r"[\s,]+")  # several tokens: comma or space separated

# --- join tokens ------------------------------------------------------------------------
JOIN_TOKEN_TTL_S = 3600.0  # a minted token's lifetime, in seconds: long enough to open a page
MAX_JOIN_TOKEN_TTL_S = 7 * 24 * 3600.0  # longest lifetime mint accepts, in seconds
MAX_TOKEN_CHARS = 1024  # longest token (join or bearer) read; a join token is ~150 characters
MIN_SECRET_BYTES = 16  # 128 bits: the HMAC secret, as strong as a session key
MIN_BEARER_TOKEN_CHARS = 16  # a shorter bearer token is guessable over the internet
JOIN_TOKEN_NONCE_BYTES = 12  # 96 bits: two tokens minted at the same instant still differ
MAX_CLAIM_CHARS = 256  # a stream id or subject carried in a token
JOIN_TOKEN_VERSION = 1
# domain separation: a secret shared with another HMAC use never signs a join token by accident
JOIN_TOKEN_MAC_CONTEXT = b"rtcpool join token v1\x00"
JOIN_TOKEN_CLAIMS = frozenset({"v", "exp", "n", "st", "sub"})
B64URL_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# --- origins ----------------------------------------------------------------------------
LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})  # allowed when the list is empty
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
ANY_ORIGIN = "*"  # in allowed_origins: every origin (a public embed; auth still applies)
NULL_ORIGIN = "null"  # what a sandboxed iframe or a file:// page sends; allowed only if listed
SHOWN_ORIGIN_CHARS = 100  # a refused origin is quoted in the reason up to this length
AUTH_REALM = "rtcpool"
# WWW-Authenticate of a 401 (RFC 6750): no credentials, and credentials refused
BEARER_CHALLENGE = f'Bearer realm="{AUTH_REALM}"'
INVALID_TOKEN_CHALLENGE = f'Bearer realm="{AUTH_REALM}", error="invalid_token"'

# --- Gradio -----------------------------------------------------------------------------
# Checked against gradio 6.31.0 (gradio/routes.py, App.create_app): the route GET
# {API_PREFIX}/user is served by a closure `get_current_user(request) -> str | None` that
# asks App.auth_dependency, else looks the cookie `access-token-{app.cookie_id}` (or
# `access-token-unsecure-...`) up in App.tokens. It is not reachable as an attribute, so it
# is found among the app's routes; tests/guard/test_auth.py fails if it moves.
GRADIO_VERSION_CHECKED = "6.31.0"
GRADIO_USER_ENDPOINT = "get_current_user"
GRADIO_USER_PATH = "/user"  # under gradio.route_utils.API_PREFIX
MAX_ROUTE_NESTING = 4  # routers within routers searched for it (gradio 6.31 uses one level)

AuthMode = Literal["none", "bearer", "join_token", "gradio"]


class AuthConfigError(ValueError):
    """The auth config cannot work (a secret missing from the environment, too short, ...)."""


def _normalize_origin(text: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None if ``text``
    is not an origin (a path, query, user name or bad port makes it a URL, not an origin)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class AuthConfig(BaseModel):
    """``gateway.auth``: who may use the signalling routes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: AuthMode = Field(
        "none",
        description=(
            "none: anyone; bearer: 'Authorization: Bearer <token>' with a token from "
            "bearer_tokens_env; join_token: a signed, expiring token (rtcpool token) made with "
            "the secret in secret_env; gradio: the Gradio login of an app launched with auth="
        ),
    )
    bearer_tokens_env: str = Field(
        BEARER_TOKENS_ENV,
        pattern=ENV_NAME_PATTERN,
        description="environment variable holding the bearer token(s), comma or space separated",
    )
    secret_env: str = Field(
        JOIN_SECRET_ENV,
        pattern=ENV_NAME_PATTERN,
        description=f"environment variable holding the join-token HMAC secret (>= {MIN_SECRET_BYTES} bytes)",
    )
    operator_tokens_env: str = Field(
        OPERATOR_TOKENS_ENV,
        pattern=ENV_NAME_PATTERN,
        description=(
            "environment variable holding the operator bearer token(s): GET /webrtc/sessions shows "
            "every session's internals (pids, nodes) only to these, or to a direct loopback client"
        ),
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description=(
            "browser origins (scheme://host[:port]) that may call the routes, besides the app's "
            "own; empty: the app's own and localhost/127.0.0.1/[::1] on any port; '*': any"
        ),
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            if item in (ANY_ORIGIN, NULL_ORIGIN):
                out.append(item)
                continue
            norm = _normalize_origin(item)
            if norm is None:
                raise ValueError(f"{item!r} is not an origin: scheme://host[:port], no path")
            out.append(norm)
        return out


# --- join tokens ------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinClaims:
    """What a verified join token says."""

    expires_at: float  # unix time, seconds
    stream_id: str | None  # None: any stream
    subject: str | None  # who it was minted for (the app's user id), if anyone
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _sign(secret: bytes, payload_b64: str) -> str:
    mac = hmac.new(secret, JOIN_TOKEN_MAC_CONTEXT + payload_b64.encode("ascii"), hashlib.sha256)
    return _b64(mac.digest())


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET_BYTES:
        raise AuthConfigError(f"the join-token secret must be at least {MIN_SECRET_BYTES} bytes (make one with {SECRET_HINT})")


def _check_claim(name: str, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS):
        raise ValueError(f"{name} must be a non-empty string of at most {MAX_CLAIM_CHARS} characters")


def mint_join_token(
    secret: bytes,
    *,
    stream_id: str | None = None,
    ttl_s: float = JOIN_TOKEN_TTL_S,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A join token valid for ``ttl_s`` seconds from ``now`` (unix time), for one stream
    (``stream_id``) or any (None), naming ``subject`` if given."""
    _check_secret(secret)
    if not (isinstance(ttl_s, (int, float)) and 0 < ttl_s <= MAX_JOIN_TOKEN_TTL_S):
        raise ValueError(f"ttl_s must be above 0 and at most {MAX_JOIN_TOKEN_TTL_S:g} seconds, not {ttl_s!r}")
    _check_claim("stream_id", stream_id)
    _check_claim("subject", subject)
    now = time.time() if now is None else now
    payload: dict[str, Any] = {
        "v": JOIN_TOKEN_VERSION,
        "exp": round(now + ttl_s, 3),
        "n": _b64(secrets.token_bytes(JOIN_TOKEN_NONCE_BYTES)),
    }
    if stream_id is not None:
        payload["st"] = stream_id
    if subject is not None:
        payload["sub"] = subject
    payload_b64 = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii"))
    token = f"{payload_b64}.{_sign(bytes(secret), payload_b64)}"
    if len(token) > MAX_TOKEN_CHARS:  # unreachable with MAX_CLAIM_CHARS claims; kept honest
        raise ValueError(f"the token would be longer than {MAX_TOKEN_CHARS} characters")
    return token


def _invalid(code: ErrorCode, message: str) -> Refused:
    """A credential refused: with the RFC 6750 challenge, but for a token of another stream
    (a 403: a challenge would invite the client to try the same token again)."""
    challenge = None if code == ErrorCode.TOKEN_WRONG_STREAM else INVALID_TOKEN_CHALLENGE
    return Refused(code, message, challenge=challenge)


def _no_constants(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _claims(raw: bytes) -> JoinClaims:
    """The payload, checked field by field (it is signed, but a secret may be shared with a
    buggy minter: a bad payload is a bad token, never an exception of another kind)."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid(ErrorCode.BAD_TOKEN, "the token's payload is not JSON") from None
    if not isinstance(data, dict) or not set(data) <= JOIN_TOKEN_CLAIMS:
        raise _invalid(ErrorCode.BAD_TOKEN, "the token's payload is not a join token")
    exp, nonce, stream, subject = data.get("exp"), data.get("n"), data.get("st"), data.get("sub")
    if data.get("v") != JOIN_TOKEN_VERSION or isinstance(data.get("v"), bool):
        raise _invalid(ErrorCode.BAD_TOKEN, f"the token is not a version {JOIN_TOKEN_VERSION} join token")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        raise _invalid(ErrorCode.BAD_TOKEN, "the token has no expiry")
    for value in (nonce, stream, subject):
        if value is not None and (not isinstance(value, str) or len(value) > MAX_CLAIM_CHARS):
            raise _invalid(ErrorCode.BAD_TOKEN, "the token's claims are not short strings")
    if not isinstance(nonce, str):
        raise _invalid(ErrorCode.BAD_TOKEN, "the token has no nonce")
    return JoinClaims(float(exp), stream, subject, nonce)


def verify_join_token(
    secret: bytes, token: str, *, stream_id: str | None = None, now: float | None = None
) -> JoinClaims:
    """The claims of ``token`` if it is signed with ``secret``, unexpired at ``now`` (unix
    time) and, when both name a stream, for ``stream_id``; else Refused 401 ``bad_token``
    or ``token_expired``, or 403 ``token_wrong_stream``. A route that knows no stream
    (``stream_id=None``) accepts a token for any stream."""
    _check_secret(secret)
    if not isinstance(token, str) or not token:
        raise _invalid(ErrorCode.BAD_TOKEN, "no token")
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid(ErrorCode.BAD_TOKEN, f"a token has at most {MAX_TOKEN_CHARS} characters")
    payload_b64, sep, signature = token.partition(".")
    if not sep or not B64URL_RE.match(payload_b64) or not B64URL_RE.match(signature):
        raise _invalid(ErrorCode.BAD_TOKEN, "a join token is two base64url parts joined by '.'")
    # the signature first: nothing of an unsigned payload is parsed
    if not hmac.compare_digest(_sign(bytes(secret), payload_b64).encode("ascii"), signature.encode("ascii")):
        raise _invalid(ErrorCode.BAD_TOKEN, "the token's signature does not match")
    try:
        raw = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(ErrorCode.BAD_TOKEN, "the token's payload is not base64url") from None
    claims = _claims(raw)
    now = time.time() if now is None else now
    if now >= claims.expires_at:
        raise _invalid(ErrorCode.TOKEN_EXPIRED, "the token has expired")
    if stream_id is not None and claims.stream_id is not None and claims.stream_id != stream_id:
        raise _invalid(ErrorCode.TOKEN_WRONG_STREAM, "the token is for another stream")
    return claims


# --- the routes' check ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthGrant:
    """Who a request was let in as."""

    mode: AuthMode
    subject: str | None = None  # the Gradio user, or the join token's subject
    claims: JoinClaims | None = None  # join_token mode
    operator: bool = False  # it presented an operator token (gateway.auth.operator_tokens_env)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: no such header)."""
    value = _header(headers, "authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":  # RFC 7235: the scheme is case-insensitive
        return None
    return token.strip()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # a plain dict may have any case; starlette's Headers is case-insensitive already
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def _token_digest(token: str) -> bytes:
    # compared as digests: equal lengths, so the comparison time says nothing of the length
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class GradioAuthUnavailable(RuntimeError):
    """The installed Gradio has no ``get_current_user`` route where rtcpool looks for it."""


_gradio_endpoints: weakref.WeakKeyDictionary[Any, Callable[[Any], Any]] = weakref.WeakKeyDictionary()


def _routes_of(node: Any) -> list[Any]:
    """The routes under an app, a router or a mount. FastAPI >= 0.16x keeps an included
    router as one ``_IncludedRouter`` holding ``original_router`` (gradio 6 includes its
    API routes so), older ones copy the router's routes into the app's."""
    routes = getattr(node, "routes", None)
    if routes is None:
        routes = getattr(getattr(node, "original_router", None), "routes", None)
    return list(routes or ())


def gradio_user_endpoint(app: Any) -> Callable[[Any], Any]:
    """Gradio's own ``get_current_user`` of ``app`` (a ``gradio.routes.App``), or
    :class:`GradioAuthUnavailable` naming the Gradio version this was checked against."""
    found = _gradio_endpoints.get(app)
    if found is not None:
        return found
    from gradio.route_utils import API_PREFIX

    path = API_PREFIX + GRADIO_USER_PATH
    stack = [(r, 0) for r in _routes_of(app)]
    while stack:
        route, depth = stack.pop()
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:
            if depth < MAX_ROUTE_NESTING:
                stack.extend((r, depth + 1) for r in _routes_of(route))
            continue
        if str(getattr(route, "path", "")).rstrip("/") == path and getattr(endpoint, "__name__", None) == GRADIO_USER_ENDPOINT:
            _gradio_endpoints[app] = endpoint
            return endpoint
    import gradio

    raise GradioAuthUnavailable(
        f"gradio {gradio.__version__}: no {GRADIO_USER_ENDPOINT} at {path} (rtcpool's Gradio auth "
        f"was checked against gradio {GRADIO_VERSION_CHECKED})"
    )


def gradio_auth_enabled(app: Any) -> bool:
    """Whether ``app`` asks for a login at all: Gradio's own login_check lets every request
    through when the app has neither ``auth`` nor ``auth_dependency``."""
    return getattr(app, "auth", None) is not None or getattr(app, "auth_dependency", None) is not None


async def gradio_user(request: Request, app: Any) -> str | None:
    """The user name of the Gradio session ``request`` carries for ``app`` (the login
    cookie, or the app's ``auth_dependency``), or None: Gradio's own answer."""
    user = gradio_user_endpoint(app)(request)
    if inspect.isawaitable(user):
        user = await user
    return user if isinstance(user, str) and user else None


def gradio_app_of(request: Request) -> Any | None:
    """The Gradio App serving ``request`` (the routes are mounted on it), if it is one."""
    import sys

    routes = sys.modules.get("gradio.routes")
    app = request.scope.get("app")
    return app if routes is not None and isinstance(app, routes.App) else None


class SignallingAuth:
    """The check in front of every signalling route: :meth:`check_request` (a starlette
    request; every mode) or :meth:`check` (headers only; every mode but gradio).

    Order: the Origin first (a foreign page is refused whoever it logs in as), then the
    credentials."""

    def __init__(
        self, config: AuthConfig, *, environ: Mapping[str, str] | None = None, hosts: HostAllowList | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self.mode: AuthMode = config.mode
        self._origins = frozenset(config.allowed_origins)
        # None: no Host check (a bare SignallingAuth in a test); the gateway always gives one
        self.hosts = hosts
        self._bearer: tuple[bytes, ...] = ()
        self._secret: bytes | None = None
        operators = [t for t in BEARER_TOKEN_SEPARATORS_RE.split(env.get(config.operator_tokens_env, "")) if t]
        if any(len(t) < MIN_BEARER_TOKEN_CHARS for t in operators):
            raise AuthConfigError(f"${config.operator_tokens_env}: every operator token needs at least {MIN_BEARER_TOKEN_CHARS} characters (make one with {SECRET_HINT})")
        self._operators = tuple(_token_digest(t) for t in operators)
        if config.mode == "bearer":
            tokens = [t for t in BEARER_TOKEN_SEPARATORS_RE.split(env.get(config.bearer_tokens_env, "")) if t]
            if not tokens:
                raise AuthConfigError(f"gateway.auth.mode is 'bearer' but ${config.bearer_tokens_env} holds no token")
            if any(len(t) < MIN_BEARER_TOKEN_CHARS for t in tokens):
                raise AuthConfigError(f"${config.bearer_tokens_env}: every bearer token needs at least {MIN_BEARER_TOKEN_CHARS} characters (make one with {SECRET_HINT})")
            self._bearer = tuple(_token_digest(t) for t in tokens)
        elif config.mode == "join_token":
            self._secret = read_secret(config.secret_env, env)

    # --- origin -----------------------------------------------------------------------

    def check_origin(self, origin: str | None, *, host: str | None) -> None:
        """Refuse a browser page of a foreign origin (403 ``origin_not_allowed``). No Origin
        (a non-browser client, or a same-origin GET): allowed. The app's own origin is the
        one whose host and port are the request's Host; the scheme is not compared, as a
        TLS-terminating proxy hands an https page's requests on as http."""
        if origin is None or ANY_ORIGIN in self._origins:
            return
        origin = origin.strip()
        if origin == NULL_ORIGIN:
            if NULL_ORIGIN in self._origins:
                return
            raise self._foreign(origin)
        norm = _normalize_origin(origin)
        if norm is None:
            raise self._foreign(origin)
        parts = urlsplit(norm)
        if host and _same_authority(parts.scheme, parts.hostname or "", parts.port, host):
            return
        if not self._origins and parts.hostname in LOCAL_ORIGIN_HOSTS:
            return
        if norm in self._origins:
            return
        raise self._foreign(origin)

    @staticmethod
    def _foreign(origin: str) -> Refused:
        shown = origin[:SHOWN_ORIGIN_CHARS]
        return Refused(ErrorCode.ORIGIN_NOT_ALLOWED, f"pages of origin {shown!r} may not use this server (gateway.auth.allowed_origins)")

    # --- credentials ------------------------------------------------------------------

    def check(self, request_headers: Mapping[str, str], *, host: str | None, stream_id: str | None) -> AuthGrant:
        """Origin and credentials from the request's headers (``host``: its Host header).
        Raises Refused (421/401/403); mode ``gradio`` needs the request: :meth:`check_request`."""
        if self.hosts is not None:
            self.hosts.check(host)
        self.check_origin(_header(request_headers, "origin"), host=host)
        if self.mode == "none":
            return AuthGrant("none")
        if self.mode == "gradio":
            raise TypeError("gateway.auth.mode 'gradio' needs the request: call check_request()")
        token = bearer_token(request_headers)
        if not token:
            raise Refused(
                ErrorCode.AUTH_REQUIRED,
                "this server needs 'Authorization: Bearer <token>'",
                challenge=BEARER_CHALLENGE,
            )
        if len(token) > MAX_TOKEN_CHARS:
            raise _invalid(ErrorCode.BAD_TOKEN, f"a token has at most {MAX_TOKEN_CHARS} characters")
        if self._is_operator_token(token):
            return AuthGrant(self.mode, subject="operator", operator=True)
        if self.mode == "bearer":
            digest = _token_digest(token)
            # every configured token is compared: the time taken does not say which matched
            matched = [hmac.compare_digest(digest, known) for known in self._bearer]
            if not any(matched):
                raise _invalid(ErrorCode.BAD_TOKEN, "the bearer token is not one this server knows")
            return AuthGrant("bearer")
        assert self._secret is not None
        claims = verify_join_token(self._secret, token, stream_id=stream_id)
        return AuthGrant("join_token", subject=claims.subject, claims=claims)

    async def check_request(self, request: Request, *, stream_id: str | None, gradio_app: Any | None = None) -> AuthGrant:
        """:meth:`check` for a starlette request; in mode ``gradio`` the Gradio session of
        ``gradio_app`` (default: the Gradio App the request is served by)."""
        headers = request.headers
        host = headers.get("host")
        if self.mode != "gradio":
            return self.check(headers, host=host, stream_id=stream_id)
        if self.hosts is not None:
            self.hosts.check(host)
        self.check_origin(headers.get("origin"), host=host)
        app = gradio_app if gradio_app is not None else gradio_app_of(request)
        if app is None:
            # a config error, not the client's: said plainly rather than letting everyone in
            raise Refused(ErrorCode.AUTH_MISCONFIGURED, "gateway.auth.mode is 'gradio' but these routes are not on a Gradio app")
        if not gradio_auth_enabled(app):
            return AuthGrant("gradio")
        user = await gradio_user(request, app)
        if user is None:
            raise Refused(ErrorCode.AUTH_REQUIRED, "log in to the app first (its Gradio login)")
        return AuthGrant("gradio", subject=user)

    def _is_operator_token(self, token: str) -> bool:
        if not self._operators:
            return False
        digest = _token_digest(token)
        return any([hmac.compare_digest(digest, known) for known in self._operators])

    def is_operator(self, grant: AuthGrant, request_headers: Mapping[str, str], client: str | None) -> bool:
        """Whether a request let in as ``grant`` may see the deployment's internals (worker
        and media pids, node ids): it carried an operator token (``Authorization: Bearer``,
        one of ``operator_tokens_env``'s, accepted in every mode but gradio), or it comes
        straight from this machine (a loopback peer and no proxy header): whoever is logged
        in here can read the process list anyway."""
        if grant.operator:
            return True
        token = bearer_token(request_headers)
        if token and len(token) <= MAX_TOKEN_CHARS and self._is_operator_token(token):
            return True  # mode none or gradio: the token is not the way in, but it still says who
        if any(_header(request_headers, h) is not None for h in FORWARDING_HEADERS):
            return False
        try:
            return client is not None and ipaddress.ip_address(client.split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    def mint_join_token(self, *, stream_id: str | None = None, ttl_s: float = JOIN_TOKEN_TTL_S, subject: str | None = None) -> str:
        """A join token for this server (mode ``join_token``): what an app hands its users."""
        if self._secret is None:
            raise AuthConfigError("gateway.auth.mode is not 'join_token': there is no secret to sign with")
        return mint_join_token(self._secret, stream_id=stream_id, ttl_s=ttl_s, subject=subject)


def read_secret(env_name: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The join-token secret from environment variable ``env_name`` (its UTF-8 bytes), or
    :class:`AuthConfigError` saying how to set one."""
    env = os.environ if environ is None else environ
    value = env.get(env_name, "")
    if not value:
        raise AuthConfigError(f"no join-token secret: set ${env_name} (make one with {SECRET_HINT})")
    secret = value.encode("utf-8")
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthConfigError(f"${env_name} is too short: at least {MIN_SECRET_BYTES} bytes (make one with {SECRET_HINT})")
    return secret


def _same_authority(origin_scheme: str, origin_host: str, origin_port: int | None, host: str) -> bool:
    """Whether the Origin's host and port are the request's Host header. A Host without a
    port matches the Origin's default port (the proxy's scheme may differ from the page's)."""
    try:
        parts = urlsplit("//" + host.strip())
        host_name, host_port = parts.hostname, parts.port
    except ValueError:
        return False
    if not host_name or host_name.lower() != origin_host.lower():
        return False
    want = origin_port if origin_port is not None else DEFAULT_PORTS.get(origin_scheme)
    return host_port == want or (host_port is None and origin_port is None)
