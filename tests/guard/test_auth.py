"""runtime/guard/auth.py: join tokens (round trip, expiry, stream binding, every kind of forgery),
the Origin rule, bearer and join-token modes, Gradio's login as the gateway sees it (a real
Gradio app, logged in over HTTP), and ``rtcpool token``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from runtime.errors import Refused
from runtime.front.statuses import http_headers, http_status
from runtime.guard import auth as A
from runtime.guard.auth import (
    AuthConfig,
    AuthConfigError,
    JoinClaims,
    SignallingAuth,
    gradio_user,
    mint_join_token,
    verify_join_token,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
NOW = 1_700_000_000.0
BEARER = "a-bearer-token-of-32-characters!"


def refused(fn, *args, **kwargs) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args, **kwargs)
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: bytes | str, secret: bytes = SECRET) -> str:
    """A token with any payload, correctly signed: what a buggy minter could make."""
    p = b64(payload.encode() if isinstance(payload, str) else payload)
    mac = hmac.new(secret, A.JOIN_TOKEN_MAC_CONTEXT + p.encode(), hashlib.sha256).digest()
    return f"{p}.{b64(mac)}"


# --- join tokens ------------------------------------------------------------------------


def test_round_trip():
    token = mint_join_token(SECRET, stream_id="cam", subject="alice", ttl_s=60, now=NOW)
    claims = verify_join_token(SECRET, token, stream_id="cam", now=NOW + 59.9)
    assert claims == JoinClaims(NOW + 60, "cam", "alice", claims.nonce)
    assert len(token) < 200 and "=" not in token
    # no stream, no subject: any stream
    anyone = verify_join_token(SECRET, mint_join_token(SECRET, now=NOW), stream_id="x", now=NOW)
    assert (anyone.stream_id, anyone.subject) == (None, None)
    assert anyone.expires_at == NOW + A.JOIN_TOKEN_TTL_S


def test_tokens_differ_by_nonce():
    assert mint_join_token(SECRET, now=NOW) != mint_join_token(SECRET, now=NOW)


def test_expired():
    token = mint_join_token(SECRET, ttl_s=10, now=NOW)
    err = refused(verify_join_token, SECRET, token, now=NOW + 10)
    assert (http_status(err), err.error) == (401, "token_expired")
    assert "invalid_token" in http_headers(err)["WWW-Authenticate"]
    # now=None is the wall clock: NOW is in the past, so a token minted then is long expired
    assert refused(verify_join_token, SECRET, mint_join_token(SECRET, ttl_s=1, now=NOW)).error == "token_expired"
    assert verify_join_token(SECRET, mint_join_token(SECRET, ttl_s=1)).subject is None


def test_wrong_stream():
    token = mint_join_token(SECRET, stream_id="cam", now=NOW)
    err = refused(verify_join_token, SECRET, token, stream_id="mic", now=NOW)
    assert (http_status(err), err.error) == (403, "token_wrong_stream")
    assert "WWW-Authenticate" not in http_headers(err)
    # a route that knows no stream takes it
    assert verify_join_token(SECRET, token, stream_id=None, now=NOW).stream_id == "cam"


def test_wrong_secret_and_tampering():
    token = mint_join_token(SECRET, stream_id="cam", now=NOW)
    assert refused(verify_join_token, OTHER_SECRET, token, now=NOW).error == "bad_token"
    payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["st"] = "mic"
    claims["exp"] = NOW + 10**6
    tampered = b64(json.dumps(claims, separators=(",", ":")).encode()) + "." + sig
    assert refused(verify_join_token, SECRET, tampered, now=NOW).error == "bad_token"
    # every single-character change of the signature or payload
    for i in range(len(token)):
        if token[i] == ".":
            continue
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        err = refused(verify_join_token, SECRET, flipped, now=NOW)
        assert (http_status(err), err.error) == (401, "bad_token")


def test_every_truncation_is_bad_token():
    token = mint_join_token(SECRET, stream_id="cam", subject="bob", now=NOW)
    for n in range(len(token)):
        err = refused(verify_join_token, SECRET, token[:n], now=NOW)
        assert (http_status(err), err.error) == (401, "bad_token")


MALFORMED = [
    "",
    ".",
    "abc",
    "abc.",
    ".abc",
    "a.b.c",
    "a b.c",
    "abc=.def",
    "abc.def=",
    "ab+c.de/f",
    "é.é",
    "\x00.\x00",
    "x" * (A.MAX_TOKEN_CHARS + 1),
    ("x" * 600) + "." + ("y" * 600),
]


@pytest.mark.parametrize("token", MALFORMED)
def test_malformed(token):
    err = refused(verify_join_token, SECRET, token, now=NOW)
    assert (http_status(err), err.error) == (401, "bad_token")


@pytest.mark.parametrize("token", [None, 5, b"abc.def", ["a.b"]])
def test_not_a_string(token):
    assert refused(verify_join_token, SECRET, token, now=NOW).error == "bad_token"


SIGNED_BAD_PAYLOADS = [
    b"\xff\xfe",  # not UTF-8
    b"not json",
    b"[1,2]",
    b'"exp"',
    b"null",
    b"[" * 300 + b"]" * 300,  # deep JSON
    b'{"v":1,"exp":' + b"[" * 200 + b"]" * 200 + b',"n":"x"}',
    b'{"v":1,"exp":NaN,"n":"x"}',
    b'{"v":1,"exp":Infinity,"n":"x"}',
    b'{"v":1,"exp":1e999,"n":"x"}',
    b'{"v":1,"exp":"2000000000","n":"x"}',
    b'{"v":1,"exp":true,"n":"x"}',
    b'{"v":1,"n":"x"}',
    b'{"v":1,"exp":2000000000}',
    b'{"v":1,"exp":2000000000,"n":5}',
    b'{"v":2,"exp":2000000000,"n":"x"}',
    b'{"v":true,"exp":2000000000,"n":"x"}',
    b'{"exp":2000000000,"n":"x"}',
    b'{"v":1,"exp":2000000000,"n":"x","st":["cam"]}',
    b'{"v":1,"exp":2000000000,"n":"x","sub":{"a":1}}',
    b'{"v":1,"exp":2000000000,"n":"x","admin":true}',
    b'{"v":1,"exp":2000000000,"n":"x","st":"' + b"s" * 300 + b'"}',
]


@pytest.mark.parametrize("payload", SIGNED_BAD_PAYLOADS)
def test_signed_but_bad_payload(payload):
    token = forge(payload)
    if len(token) > A.MAX_TOKEN_CHARS:
        token = token[: A.MAX_TOKEN_CHARS + 1]
    err = refused(verify_join_token, SECRET, token, now=NOW)
    assert (http_status(err), err.error) == (401, "bad_token")


def test_signed_good_payload_by_hand():
    claims = verify_join_token(SECRET, forge('{"v":1,"exp":2000000000,"n":"x","st":"cam"}'), stream_id="cam", now=NOW)
    assert claims == JoinClaims(2_000_000_000.0, "cam", None, "x")


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl_s": 0}, {"ttl_s": -1}, {"ttl_s": float("nan")}, {"ttl_s": A.MAX_JOIN_TOKEN_TTL_S + 1}, {"stream_id": ""}, {"subject": "x" * 257}, {"stream_id": 5}],
)
def test_mint_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        mint_join_token(SECRET, now=NOW, **kwargs)


@pytest.mark.parametrize("secret", [b"", b"short", "a-string-secret-of-32-characters", None])
def test_short_or_missing_secret(secret):
    with pytest.raises(AuthConfigError):
        mint_join_token(secret)
    with pytest.raises(AuthConfigError):
        verify_join_token(secret, "a.b")


# --- origins ----------------------------------------------------------------------------


def auth(**kw) -> SignallingAuth:
    return SignallingAuth(AuthConfig(**kw), environ={})


ORIGINS = [
    # (allowed_origins, Origin, Host, allowed)
    ([], None, "app.example.com", True),  # a non-browser client
    ([], "https://app.example.com", "app.example.com", True),  # the app's own
    ([], "http://app.example.com", "app.example.com", True),  # TLS ended at a proxy
    ([], "https://app.example.com", "app.example.com:443", True),
    ([], "https://APP.example.com", "app.example.com", True),
    ([], "http://app.example.com:8000", "app.example.com:8000", True),
    ([], "http://app.example.com:8000", "app.example.com", False),
    ([], "http://app.example.com", "app.example.com:8000", False),
    ([], "http://[2001:db8::1]:7860", "[2001:db8::1]:7860", True),
    ([], "http://localhost:5173", "app.example.com", True),  # localhost: any port
    ([], "https://127.0.0.1:9999", "app.example.com", True),
    ([], "http://[::1]:3000", "app.example.com", True),
    ([], "http://localhost.evil.com", "app.example.com", False),
    ([], "https://evil.com", "app.example.com", False),
    ([], "https://app.example.com.evil.com", "app.example.com", False),
    ([], "null", "app.example.com", False),
    ([], "garbage", "app.example.com", False),
    ([], "https://app.example.com/path", "app.example.com", False),
    ([], "https://u:p@app.example.com", "app.example.com", False),
    ([], "http://app.example.com:99999", "app.example.com", False),
    ([], "https://evil.com", None, False),
    ([], "https://app.example.com", "bad host:x", False),
    (["https://embed.example.org"], "https://embed.example.org", "app.example.com", True),
    (["https://embed.example.org:443"], "https://embed.example.org", "app.example.com", True),
    (["https://embed.example.org"], "http://embed.example.org", "app.example.com", False),
    (["https://embed.example.org"], "https://embed.example.org:8443", "app.example.com", False),
    (["https://embed.example.org"], "http://localhost:5173", "app.example.com", False),  # a list replaces localhost
    (["https://embed.example.org"], "https://app.example.com", "app.example.com", True),  # the own origin stays
    (["http://localhost:5173"], "http://localhost:5173", "app.example.com", True),
    (["null"], "null", "app.example.com", True),
    (["*"], "https://anything.example", "app.example.com", True),
    (["*"], "null", "app.example.com", True),
]


@pytest.mark.parametrize(("allowed", "origin", "host", "ok"), ORIGINS)
def test_origin_rule(allowed, origin, host, ok):
    a = auth(allowed_origins=allowed)
    headers = {} if origin is None else {"Origin": origin}
    if ok:
        assert a.check(headers, host=host, stream_id=None) == A.AuthGrant("none")
    else:
        err = refused(a.check, headers, host=host, stream_id=None)
        assert (http_status(err), err.error) == (403, "origin_not_allowed")


@pytest.mark.parametrize("bad", ["https://x.org/", "https://x.org/path", "x.org", "https://", "https://x.org?q", "https://x.org:port"])
def test_allowed_origins_must_be_origins(bad):
    with pytest.raises(ValidationError):
        AuthConfig(allowed_origins=[bad])


def test_allowed_origins_normalized():
    cfg = AuthConfig(allowed_origins=["HTTPS://Embed.Example.org:443", "http://[2001:DB8::1]:80", "http://h:8080", "*"])
    assert cfg.allowed_origins == ["https://embed.example.org", "http://[2001:db8::1]", "http://h:8080", "*"]


# --- modes ------------------------------------------------------------------------------


def test_config_defaults_and_strictness():
    cfg = AuthConfig()
    assert (cfg.mode, cfg.bearer_tokens_env, cfg.secret_env, cfg.allowed_origins) == ("none", "RTCPOOL_BEARER_TOKENS", "RTCPOOL_JOIN_SECRET", [])
    assert all(f.description for f in AuthConfig.model_fields.values())
    for bad in ({"mode": "basic"}, {"secret": "x"}, {"secret_env": "NOT A NAME"}, {"bearer_tokens_env": ""}, {"allowed_origins": "https://x.org"}):
        with pytest.raises(ValidationError):
            AuthConfig(**bad)


def test_bearer_mode():
    a = SignallingAuth(AuthConfig(mode="bearer"), environ={"RTCPOOL_BEARER_TOKENS": f"{BEARER}, second-token-0123456789"})
    assert a.check({"Authorization": f"Bearer {BEARER}"}, host="h", stream_id=None) == A.AuthGrant("bearer")
    assert a.check({"authorization": "bearer second-token-0123456789"}, host="h", stream_id="s").mode == "bearer"
    missing = refused(a.check, {}, host="h", stream_id=None)
    assert (http_status(missing), missing.error) == (401, "auth_required")
    assert http_headers(missing)["WWW-Authenticate"] == 'Bearer realm="rtcpool"'
    for header in (f"Bearer {BEARER}x", f"Bearer {BEARER[:-1]}", "Bearer " + "x" * 5000, f"Basic {BEARER}", "Bearer", "", f"Bearer  {BEARER} junk"):
        err = refused(a.check, {"Authorization": header}, host="h", stream_id=None)
        assert http_status(err) == 401 and err.error in ("bad_token", "auth_required"), header
    # the Origin is checked first
    assert refused(a.check, {"Authorization": f"Bearer {BEARER}", "Origin": "https://evil.com"}, host="h", stream_id=None).error == "origin_not_allowed"


@pytest.mark.parametrize("value", ["", " , ", "short"])
def test_bearer_mode_needs_good_tokens(value):
    with pytest.raises(AuthConfigError):
        SignallingAuth(AuthConfig(mode="bearer"), environ={"RTCPOOL_BEARER_TOKENS": value})


def test_join_token_mode():
    env = {"MY_SECRET": SECRET.decode()}
    a = SignallingAuth(AuthConfig(mode="join_token", secret_env="MY_SECRET"), environ=env)
    token = a.mint_join_token(stream_id="cam", subject="carol")
    grant = a.check({"Authorization": f"Bearer {token}"}, host="h", stream_id="cam")
    assert (grant.mode, grant.subject, grant.claims.stream_id) == ("join_token", "carol", "cam")
    assert refused(a.check, {"Authorization": f"Bearer {token}"}, host="h", stream_id="mic").error == "token_wrong_stream"
    assert refused(a.check, {}, host="h", stream_id="cam").error == "auth_required"
    assert refused(a.check, {"Authorization": "Bearer nope"}, host="h", stream_id="cam").error == "bad_token"
    other = mint_join_token(OTHER_SECRET, stream_id="cam")
    assert refused(a.check, {"Authorization": f"Bearer {other}"}, host="h", stream_id="cam").error == "bad_token"
    with pytest.raises(AuthConfigError):
        SignallingAuth(AuthConfig(mode="join_token"), environ={})
    with pytest.raises(AuthConfigError):
        SignallingAuth(AuthConfig(mode="join_token"), environ={"RTCPOOL_JOIN_SECRET": "short"})
    with pytest.raises(AuthConfigError):
        auth().mint_join_token()


def test_none_mode_ignores_credentials_and_gradio_needs_the_request():
    assert auth().check({"Authorization": "Bearer whatever"}, host="h", stream_id=None) == A.AuthGrant("none")
    with pytest.raises(TypeError):
        auth(mode="gradio").check({}, host="h", stream_id=None)


# --- Gradio -----------------------------------------------------------------------------


def gradio_app(auth_pairs):
    import gradio as gr

    with gr.Blocks() as demo:
        gr.Markdown("rtcpool auth test")
    demo.auth = auth_pairs  # what launch(auth=...) sets before it builds the App
    return demo, gr.routes.App.create_app(demo)


def add_probe(app, mode: str = "gradio") -> None:
    """A route on the Gradio App, as the gateway's /webrtc/* routes are."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    checker = SignallingAuth(AuthConfig(mode=mode), environ={})

    async def probe(request: Request) -> JSONResponse:
        user = await gradio_user(request, app)
        try:
            grant = await checker.check_request(request, stream_id=None)
        except Refused as err:
            return JSONResponse({"user": user, **err.body()}, status_code=http_status(err))
        return JSONResponse({"user": user, "subject": grant.subject})

    app.add_route("/probe", probe)


def test_gradio_attributes_used_exist():
    import gradio

    from runtime.guard import auth as auth_module

    _, app = gradio_app([("u", "p")])
    assert auth_module.gradio_user_endpoint(app).__name__ == A.GRADIO_USER_ENDPOINT
    assert hasattr(app, "auth") and hasattr(app, "auth_dependency") and hasattr(app, "tokens") and hasattr(app, "cookie_id")
    assert A.gradio_auth_enabled(app)
    assert not A.gradio_auth_enabled(gradio_app(None)[1])
    if gradio.__version__ != A.GRADIO_VERSION_CHECKED:
        pytest.fail(f"gradio {gradio.__version__} installed: re-read gradio/routes.py get_current_user and update GRADIO_VERSION_CHECKED")


async def test_gradio_login_cookie():
    _, app = gradio_app([("u", "p")])
    add_probe(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:7860") as client:
        anon = await client.get("/probe")
        assert anon.status_code == 401
        assert anon.json()["user"] is None and anon.json()["meta"]["error"] == "auth_required"
        bad = await client.post("/login", data={"username": "u", "password": "wrong"})
        assert bad.status_code == 400
        assert (await client.get("/probe")).status_code == 401
        ok = await client.post("/login", data={"username": "u", "password": "p"})
        assert ok.status_code == 200
        me = await client.get("/probe")
        assert me.status_code == 200 and me.json() == {"user": "u", "subject": "u"}
        # a foreign page is refused even with the cookie
        assert (await client.get("/probe", headers={"Origin": "https://evil.com"})).status_code == 403
        cookies = dict(client.cookies)
        # logged out: the cookie no longer names a session
        await client.get("/logout")
        client.cookies.update(cookies)
        assert (await client.get("/probe")).json()["user"] is None
    # someone else's cookie name with the right value, or a guessed value: nobody
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:7860") as client:
        client.cookies.set(f"access-token-{app.cookie_id}", "guessed")
        assert (await client.get("/probe")).json()["user"] is None


async def test_gradio_app_without_auth_lets_everyone_in():
    _, app = gradio_app(None)
    add_probe(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        r = await client.get("/probe")
        assert r.status_code == 200 and r.json() == {"user": None, "subject": None}


async def test_gradio_mode_off_a_gradio_app_is_a_config_error():
    from starlette.applications import Starlette

    app = Starlette()
    checker = SignallingAuth(AuthConfig(mode="gradio"), environ={})

    async def probe(request):
        from starlette.responses import JSONResponse

        try:
            await checker.check_request(request, stream_id=None)
        except Refused as err:
            return JSONResponse(err.body(), status_code=http_status(err))
        return JSONResponse({})

    app.add_route("/probe", probe)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h") as client:
        r = await client.get("/probe")
        assert r.status_code == 500 and r.json()["meta"]["error"] == "auth_misconfigured"


def test_gradio_launched_with_auth_on_loopback():
    """The real thing: launch(auth=...) on 127.0.0.1, log in over TCP."""
    import gradio as gr

    from tests.conftest import free_port

    with gr.Blocks() as demo:
        gr.Markdown("rtcpool auth test")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, auth=("u", "p"), prevent_thread_lock=True, quiet=True)
    try:
        add_probe(demo.app)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/probe").status_code == 401
            assert client.post("/login", data={"username": "u", "password": "p"}).status_code == 200
            r = client.get("/probe", headers={"Origin": base})
            assert r.status_code == 200 and r.json()["user"] == "u"
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/probe").json()["user"] is None
    finally:
        demo.close()


# --- rtcpool token ----------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTCPOOL_")}
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "token", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_token_mints_a_verifiable_token():
    secret = "cli-secret-of-at-least-16-bytes"
    out = run_cli("--stream", "cam", "--ttl", "120", "--subject", "dave", env={"RTCPOOL_JOIN_SECRET": secret})
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    claims = verify_join_token(secret.encode(), token, stream_id="cam")
    assert (claims.stream_id, claims.subject) == ("cam", "dave")
    assert out.stdout.count("\n") == 1 and secret not in out.stdout + out.stderr


@pytest.mark.slow  # over 2 s: out of the quick subset
def test_cli_token_without_secret():
    from runtime.cli import EXIT_NO_SECRET

    out = run_cli(env={})
    assert out.returncode == EXIT_NO_SECRET
    assert "RTCPOOL_JOIN_SECRET" in out.stderr and out.stdout == ""
    short = run_cli(env={"RTCPOOL_JOIN_SECRET": "short"})
    assert short.returncode == EXIT_NO_SECRET and "too short" in short.stderr


def test_cli_token_in_process(monkeypatch, capsys):
    from runtime.cli import EXIT_BAD_CONFIG, EXIT_OK, main

    monkeypatch.setenv("RTCPOOL_JOIN_SECRET", SECRET.decode())
    assert main(["token"]) == EXIT_OK
    claims = verify_join_token(SECRET, capsys.readouterr().out.strip())
    assert claims.stream_id is None and claims.subject is None
    assert main(["token", "--ttl", "-5"]) == EXIT_BAD_CONFIG
    assert "ttl_s" in capsys.readouterr().err
