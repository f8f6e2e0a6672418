"""The fuzz table of tests/front/test_fuzz.py: hostile inputs for every signalling route
and the data channel, each with the exact answer the gateway owes it.

Expected outcomes are written down from reading the checks (runtime/guard/sdp_check.py,
runtime/guard/safejson.py, runtime/guard/limits.py, runtime/media/engine.py, runtime/front/gateway.py), never
computed by calling them: the table is a second opinion on the code it tests.

A case's body and headers may depend on the live "victim" session (its webrtc_id and its
key) and on a real offer SDP: they are built from a :class:`Ctx` when the case runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OK = "ok"  # an offer the gateway must answer (200 with an answer and a session key)
SUCCESS = "success"  # a request answered {"status": "success"}

# serial groups: cases that must not run at the same time as others of their group
CONCURRENT = "concurrent"
CANDIDATES = "candidates"  # in order: each counts against the victim's candidate budget
INPUTS = "inputs"  # in order, after the data channel's fuzz: an input may warn on the victim's channel
ACCEPTED = "accepted"  # each takes the one free slot (concurrency_limit 2, the victim holds one)

MAX_CANDIDATES_PER_SESSION = 64  # runtime/guard/limits.py
MAX_JSON_DEPTH = 32  # runtime/guard/safejson.py
MAX_OFFER_BYTES = 64 * 1024  # runtime/constants.py
MAX_INPUT_BYTES = 1024 * 1024
MAX_WEBRTC_ID_CHARS = 128
MAX_SDP_LINE_CHARS = 1024
MAX_DATA_CHANNEL_MESSAGE_BYTES = 64 * 1024
GARBAGE = "x!@#garbage"
FOREIGN_ORIGIN = "https://evil.example"
JSON_CT = {"content-type": "application/json"}
LOOPBACK_CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"


@dataclass
class Ctx:
    """What a case may be built from: the victim's id and key, a real offer SDP."""

    victim: str
    key: str
    sdp: str


Body = bytes | Callable[[Ctx], bytes] | None
Headers = dict[str, str] | Callable[[Ctx], dict[str, str]]


@dataclass
class Case:
    name: str
    method: str
    route: str
    body: Body
    status: int
    error: str | None  # meta.error of a refusal; OK / SUCCESS / None for other answers
    headers: Headers = field(default_factory=lambda: dict(JSON_CT))
    params: dict[str, str] | Callable[[Ctx], dict[str, str]] | None = None
    group: str = CONCURRENT
    consumes_candidate: bool = False  # counts against the victim's candidate budget
    webrtc_id: str | None = None  # an accepted offer's id (closed with its key at once)
    plain: bool = False  # an answer the routes do not write (health): JSON, not "failed"

    def build(self, ctx: Ctx) -> tuple[bytes | None, dict[str, str], dict[str, str] | None]:
        body = self.body(ctx) if callable(self.body) else self.body
        headers = self.headers(ctx) if callable(self.headers) else dict(self.headers)
        params = self.params(ctx) if callable(self.params) else self.params
        return body, headers, params


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def nested_list(depth: int, leaf: str = "0") -> str:
    return "[" * depth + leaf + "]" * depth


def nested_dict(depth: int, leaf: str = "0") -> str:
    return '{"a":' * depth + leaf + "}" * depth


# --- SDP mutations ------------------------------------------------------------------------

# Each line of aiortc's offer (video sendrecv + data channel "text") is named by a kind;
# for each kind the outcome of deleting it (D), cutting it to half its length (T), giving
# it a garbage value (G) and repeating it 50 times (X). Adding NUL or U+2028 anywhere is
# bad_sdp (forbidden characters), 1,100 more characters is sdp_line_too_long (the v= line:
# bad_sdp, an offer starts with exactly 'v=0').
R = "bad_sdp"
SDP_MODEL: dict[str, dict[str, str]] = {
    # session
    "v": {"D": R, "T": R, "G": R, "X": R},
    "o": {"D": OK, "T": OK, "G": OK, "X": OK},  # aiortc keeps o= as text; nothing reads it
    "s": {"D": OK, "T": R, "G": OK, "X": OK},  # T: "s" is not '<type>=<value>'
    "t": {"D": OK, "T": OK, "G": OK, "X": OK},  # T: "t=" is a line
    "group": {"D": OK, "T": OK, "G": OK, "X": OK},  # T: "a=group:B" is no BUNDLE
    "msid-semantic": {"D": OK, "T": OK, "G": OK, "X": OK},
    # both sections
    "c": {"D": OK, "T": R, "G": R, "X": OK},  # T: "c=IN IP4 " has no address
    "candidate": {"D": OK, "T": R, "G": R, "X": "too_many_candidates"},
    "end-of-candidates": {"D": OK, "T": OK, "G": OK, "X": OK},
    "ice-ufrag": {"D": "bad_ice_credentials", "T": "bad_ice_credentials", "G": "bad_ice_credentials", "X": OK},
    "ice-pwd": {"D": "bad_ice_credentials", "T": "bad_ice_credentials", "G": "bad_ice_credentials", "X": OK},
    "fingerprint": {"D": OK, "T": "bad_fingerprint", "G": "bad_fingerprint", "X": OK},  # D: two others remain
    "setup": {"D": "bad_dtls_setup", "T": "bad_dtls_setup", "G": "bad_dtls_setup", "X": OK},
    # the BUNDLE group names both mids: a section without its own breaks it
    "mid": {"D": R, "T": R, "G": R, "X": OK},
    # video
    "m-video": {"D": R, "T": R, "G": R, "X": "too_many_media_sections"},  # D: mid 0 gone from the BUNDLE
    "sendrecv": {"D": R, "T": R, "G": R, "X": OK},  # no direction; a flag takes no value
    "extmap": {"D": OK, "T": OK, "G": R, "X": OK},
    "msid": {"D": OK, "T": OK, "G": OK, "X": OK},
    "rtcp": {"D": OK, "T": R, "G": R, "X": OK},  # T: "9 IN" is half an address
    "rtcp-mux": {"D": "rtcp_mux_required", "T": "rtcp_mux_required", "G": R, "X": OK},
    "ssrc-group": {"D": OK, "T": OK, "G": OK, "X": OK},  # G: a lone semantic token is its form
    "ssrc": {"D": OK, "T": OK, "G": R, "X": OK},
    # D: the offer's H.264 (mode 1, baseline) is served without VP8 (gateway.video_codecs)
    "rtpmap-vp8": {"D": OK, "T": R, "G": R, "X": R},  # X: two rtpmaps for 97
    "rtpmap-other": {"D": R, "T": R, "G": R, "X": R},  # D: its a=fmtp is left without an rtpmap
    "fmtp-apt": {"D": OK, "T": R, "G": R, "X": OK},  # T: "a=fmtp:9" has no parameters
    "fmtp-h264": {"D": OK, "T": OK, "G": R, "X": OK},
    "rtcp-fb": {"D": OK, "T": "?", "G": R, "X": OK},  # T: see _rtcp_fb_cut
    # data channel
    "m-app": {"D": R, "T": R, "G": R, "X": "too_many_media_sections"},  # D: mid 1 gone from the BUNDLE
    "sctp-port": {"D": OK, "T": OK, "G": R, "X": OK},
    "max-message-size": {"D": OK, "T": OK, "G": R, "X": OK},
}


def _rtcp_fb_cut(line: str) -> str:
    """Half of an a=rtcp-fb line: "a=rtcp-fb:97 nack" -> "a=rtcp-f" (an attribute nobody
    checks); every other one of aiortc's ends at "a=rtcp-fb", "a=rtcp-fb:" or
    "a=rtcp-fb:<digit>", none of which is '<payload type> <feedback>'."""
    return OK if re.fullmatch(r"a=rtcp-fb:\d\d nack", line) else R


def line_kind(line: str, section: str) -> str:
    """The SDP_MODEL kind of a line of aiortc's offer; ``section``: session, video or app."""
    if line.startswith("m="):
        return "m-video" if line.startswith("m=video") else "m-app"
    if not line.startswith("a="):
        return line[0]
    name = line[2:].split(":", 1)[0]
    if name == "rtpmap":
        return "rtpmap-vp8" if "VP8/" in line else "rtpmap-other"
    if name == "fmtp":
        return "fmtp-apt" if " apt=" in line else "fmtp-h264"
    if name in SDP_MODEL:
        return name
    raise KeyError(f"no SDP_MODEL kind for {line!r} in the {section} part: the offer changed")


def _garbage(line: str) -> str:
    if line.startswith("a="):
        name = line[2:].split(":", 1)[0]
        return f"a={name}:{GARBAGE}"
    return f"{line[:2]}{GARBAGE}"


def normalise_offer(sdp: str) -> str:
    """aiortc's offer with its SSRCs made 10 digits each, so a cut in half lands at the
    same place every run (a random SSRC may have 8 digits)."""
    ssrcs = sorted(set(re.findall(r"a=ssrc:(\d+) ", sdp)), key=len, reverse=True)
    for i, ssrc in enumerate(ssrcs):
        sdp = re.sub(rf"\b{ssrc}\b", str(3_000_000_001 + i), sdp)
    return sdp


def sdp_cases(sdp: str) -> list[Case]:
    """Every line of ``sdp`` deleted, cut in half, given garbage, repeated 50 times, with a
    NUL, with U+2028 and made too long: one offer each."""
    lines = sdp.split("\r\n")
    assert lines[-1] == "", "an aiortc offer ends with CRLF"
    lines = lines[:-1]
    cases: list[Case] = []
    section = "session"
    for i, line in enumerate(lines):
        if line.startswith("m="):
            section = "video" if line.startswith("m=video") else "app"
        kind = line_kind(line, section)
        model = SDP_MODEL[kind]
        half = line[: len(line) // 2]
        middle = len(line) // 2
        mutations = {
            "D": (lines[:i] + lines[i + 1 :], model["D"]),
            "T": (lines[:i] + [half] + lines[i + 1 :], _rtcp_fb_cut(line) if kind == "rtcp-fb" else model["T"]),
            "G": (lines[:i] + [_garbage(line)] + lines[i + 1 :], model["G"]),
            "X": (lines[:i] + [line] * 50 + lines[i + 1 :], model["X"]),
            "N": (lines[:i] + [line[:middle] + "\x00" + line[middle:]] + lines[i + 1 :], R),
            "U": (lines[:i] + [line[:middle] + "\u2028" + line[middle:]] + lines[i + 1 :], R),
            "L": (lines[:i] + [line + "x" * (MAX_SDP_LINE_CHARS + 76)] + lines[i + 1 :], R if kind == "v" else "sdp_line_too_long"),
        }
        for code, (mutated, outcome) in mutations.items():
            webrtc_id = f"fz-sdp-{i}-{code}"
            text = "\r\n".join(mutated) + "\r\n"
            body = dumps({"type": "offer", "sdp": text, "webrtc_id": webrtc_id})
            name = f"sdp line {i} ({kind}) {code}: {line[:40]!r}"
            if outcome == OK:
                cases.append(Case(name, "POST", "/webrtc/offer", body, 200, OK, group=ACCEPTED, webrtc_id=webrtc_id))
            else:
                cases.append(Case(name, "POST", "/webrtc/offer", body, 400, outcome))
    return cases


# --- JSON bodies ------------------------------------------------------------------------

POST_ROUTES = ("/webrtc/offer", "/webrtc/input", "/webrtc/close", "/webrtc/outputs")
# routes about a place in a stream's line: a ticket, not a session key
QUEUE_POST_ROUTES = ("/webrtc/queue/leave",)


def _post(name: str, route: str, body: Body, status: int, error: str | None, **kw: Any) -> Case:
    return Case(f"{route} {name}", "POST", route, body, status, error, **kw)


def _valid_body(route: str, sdp: str, webrtc_id: str = "nobody") -> dict[str, Any]:
    """A well-formed body for ``route`` about an unknown session (each parse is refused
    before the id is looked at, so the id does not matter)."""
    if route == "/webrtc/offer":
        return {"type": "offer", "sdp": sdp, "webrtc_id": webrtc_id}
    if route == "/webrtc/input":
        return {"webrtc_id": webrtc_id, "args": [1]}
    if route == "/webrtc/queue/leave":
        return {"webrtc_id": webrtc_id, "ticket": "t" * 32}
    return {"webrtc_id": webrtc_id}


def json_cases(sdp: str) -> list[Case]:
    cases: list[Case] = []
    for route in POST_ROUTES + QUEUE_POST_ROUTES:
        # nesting, as the whole body and inside a field
        limit = MAX_OFFER_BYTES if route == "/webrtc/offer" else MAX_INPUT_BYTES
        for depth in (MAX_JSON_DEPTH + 1, 100, 1000, 5000, 50_000):
            # 50,000 deep is 100-250 KB: over the offer's body limit, within the others'
            status, error = (413, "body_too_large") if 2 * depth > limit else (400, "json_too_deep")
            cases.append(_post(f"body nested {depth} deep (lists)", route, nested_list(depth).encode(), status, error))
            cases.append(_post(f"body nested {depth} deep (objects)", route, nested_dict(depth).encode(), status, error))
            cases.append(_post(
                f"a field nested {depth} deep", route,
                lambda ctx, route=route, depth=depth: json.dumps(_valid_body(route, ctx.sdp))[:-1].encode() + b', "deep": ' + nested_list(depth).encode() + b"}",
                status, error,
            ))  # fmt: skip
        cases.append(_post("body nested 32 deep (lists, not an object)", route, nested_list(MAX_JSON_DEPTH).encode(), 400, "bad_json"))
        # not JSON, not an object
        for label, raw in [
            ("empty body", b""), ("whitespace", b" \r\n\t "), ("null", b"null"), ("true", b"true"), ("a number", b"1"),
            ("a string", b'"x"'), ("a list", b"[]"), ("single quotes", b"{'webrtc_id': 'x'}"), ("trailing comma", b'{"webrtc_id": "x",}'),
            ("two objects", b'{"a": 1}{"b": 2}'), ("a BOM", b'\xef\xbb\xbf{"webrtc_id": "x"}'), ("a comment", b'{"a": 1 /* x */}'),
            ("unquoted key", b"{webrtc_id: 1}"), ("raw control char in a string", b'{"webrtc_id": "a\x01b"}'), ("NUL byte", b"\x00"),
            ("only a brace", b"{"), ("javascript", b"alert(1)"), ("xml", b"<?xml version='1.0'?><a/>"), ("form data", b"webrtc_id=x&type=offer"),
        ]:  # fmt: skip
            error = "bad_json"
            cases.append(_post(label, route, raw, 400, error))
        # bad UTF-8 and lone surrogates
        for label, raw in [
            ("byte 0xff", b'{"webrtc_id": "\xff"}'), ("a bare continuation byte", b'{"webrtc_id": "\x80"}'),
            ("an overlong '/'", b'{"webrtc_id": "\xc0\xaf"}'), ("an encoded surrogate", b'{"webrtc_id": "\xed\xa0\x80"}'),
            ("a cut 3-byte character", b'{"webrtc_id": "\xe2\x82"}'), ("latin-1 text", b'{"webrtc_id": "caf\xe9"}'),
            ("UTF-16", '{"webrtc_id": "x"}'.encode("utf-16")), ("a code point over U+10FFFF", b'{"webrtc_id": "\xf4\x90\x80\x80"}'),
        ]:  # fmt: skip
            cases.append(_post(f"bad UTF-8: {label}", route, raw, 400, "bad_utf8"))
        for label, escape in [("\\ud800", "\\ud800"), ("\\udfff", "\\udfff"), ("\\ud800 then A", "\\ud800A"), ("reversed pair", "\\ude00\\ud83d")]:
            cases.append(_post(f"lone surrogate {label} in a value", route, f'{{"webrtc_id": "nobody", "x": "{escape}"}}'.encode(), 400, "bad_utf8"))
            cases.append(_post(f"lone surrogate {label} in a key", route, f'{{"webrtc_id": "nobody", "{escape}": 1}}'.encode(), 400, "bad_utf8"))
        # numbers
        for label, number in [
            ("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e999", "1e999"), ("-1e999", "-1e999"),
            ("a 100-digit int", "9" * 100), ("a 65-digit int", "1" * 65), ("a 10000-digit int", "7" * 10_000),
            ("a 70-digit fraction", "0." + "1" * 70), ("a 5000-digit exponent", "1e" + "9" * 5000),
        ]:  # fmt: skip
            cases.append(_post(f"number {label}", route, f'{{"webrtc_id": "nobody", "n": {number}}}'.encode(), 400, "bad_json_number"))
        # truncated: at every byte of a short valid body, at 50 positions of an offer's
        valid = dumps(_valid_body(route, sdp))
        step = max(1, len(valid) // 50)
        for cut in range(0, len(valid), step):
            cases.append(_post(f"valid body cut at byte {cut} of {len(valid)}", route, valid[:cut], 400, "bad_json"))
        # content types
        for label, ctype in [
            ("text/plain", "text/plain"), ("form", "application/x-www-form-urlencoded"), ("multipart", "multipart/form-data; boundary=x"),
            ("application/jsonx", "application/jsonx"), ("application/json-patch+json", "application/json-patch+json"),
            ("text/json", "text/json"), ("empty", ""), ("garbage", GARBAGE), ("a 4 KB value", "a" * 4096),
        ]:  # fmt: skip
            cases.append(_post(
                f"content-type {label}", route, lambda ctx, route=route: dumps(_valid_body(route, ctx.sdp)),
                415, "unsupported_media_type", headers={"content-type": ctype},
            ))  # fmt: skip
        cases.append(_post("no content-type", route, lambda ctx, route=route: dumps(_valid_body(route, ctx.sdp)), 415, "unsupported_media_type", headers={}))
        # oversized (the body, whatever it holds)
        cases.append(_post("body one byte over its limit", route, b" " * (limit + 1), 413, "body_too_large"))
        cases.append(_post("body 4x its limit", route, b"[" * (4 * limit), 413, "body_too_large"))
        cases.append(_post("body over its limit, JSON", route, dumps({"webrtc_id": "x", "pad": "p" * limit}), 413, "body_too_large"))
        cases.append(_post(
            "over its limit, wrong content-type", route, b" " * (limit + 1), 415, "unsupported_media_type", headers={"content-type": "text/plain"},
        ))  # the content type is checked first
    return cases


# --- fields of every route ----------------------------------------------------------------

BAD_IDS: list[tuple[str, Any]] = [
    ("int", 5), ("zero", 0), ("negative", -1), ("float", 1.5), ("true", True), ("null", None), ("list", ["x"]),
    ("empty list", []), ("object", {"id": "x"}), ("empty", ""), ("space", " "), (f"{MAX_WEBRTC_ID_CHARS + 1} chars", "a" * (MAX_WEBRTC_ID_CHARS + 1)),
    ("200 chars", "b" * 200), ("'bad id!'", "bad id!"), ("'../../etc'", "../../etc"), ("a slash", "a/b"), ("non-ASCII", "идентификатор"),
    ("NUL", "x\x00y"), ("U+2028", "x\u2028y"), ("a trailing newline", "x\n"), ("a leading newline", "\nx"), ("CRLF", "x\r\ny"),
    ("a tab", "x\ty"), ("percent-encoded", "x%2Fy"), ("a quote", 'x"y'), ("html", "<script>"), ("10 KB", "c" * 10_000),
]  # fmt: skip
BAD_KEYS: list[tuple[str, Any, str]] = [  # (label, session_key in the body, expected reason)
    ("no key", ..., "session_key_required"), ("null key", None, "session_key_required"), ("empty key", "", "session_key_required"),
    ("int key", 0, "session_key_required"), ("true key", True, "session_key_required"), ("list key", ["k"], "session_key_required"),
    ("object key", {"k": 1}, "session_key_required"), ("wrong key", "A" * 32, "bad_session_key"), ("non-ASCII key", "ключ", "bad_session_key"),
    ("U+2028 key", "\u2028", "bad_session_key"), ("NUL key", "\x00", "bad_session_key"), ("10 KB key", "k" * 10_240, "bad_session_key"),
]  # fmt: skip
VICTIM_KEY_VARIANTS: list[tuple[str, Callable[[str], str]]] = [  # the victim's own key, spoilt
    ("key minus its last char", lambda k: k[:-1]), ("key plus a char", lambda k: k + "A"), ("key reversed", lambda k: k[::-1]),
    ("key with a space", lambda k: k + " "), ("key upper-cased", lambda k: k.swapcase()), ("key's first half", lambda k: k[: len(k) // 2]),
]  # fmt: skip


def _with_key(base: dict[str, Any], key: Any) -> dict[str, Any]:
    return dict(base) if key is ... else {**base, "session_key": key}


def _victim_body(route: str, ctx: Ctx, key: Any) -> bytes:
    if route == "/webrtc/input":
        base: dict[str, Any] = {"webrtc_id": ctx.victim, "args": [1]}
    elif route == "/webrtc/offer":
        base = {"type": "ice-candidate", "webrtc_id": ctx.victim, "candidate": {"candidate": LOOPBACK_CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}}
    else:
        base = {"webrtc_id": ctx.victim}
    return dumps(_with_key(base, key))


def field_cases() -> list[Case]:
    cases: list[Case] = []
    offer = "/webrtc/offer"
    # the offer's type
    for label, kind in [
        ("missing", ...), ("null", None), ("int", 1), ("list", ["offer"]), ("'answer'", "answer"), ("'pranswer'", "pranswer"),
        ("'rollback'", "rollback"), ("'OFFER'", "OFFER"), ("'offer '", "offer "), ("empty", ""), ("'candidate'", "candidate"),
        ("'ICE-CANDIDATE'", "ICE-CANDIDATE"), ("object", {"type": "offer"}), ("10 KB", "o" * 10_000),
    ]:  # fmt: skip
        def body(ctx: Ctx, kind: Any = kind) -> bytes:
            b: dict[str, Any] = {"sdp": ctx.sdp, "webrtc_id": "fz-type"}
            if kind is not ...:
                b["type"] = kind
            return dumps(b)

        cases.append(_post(f"type {label}", offer, body, 400, "bad_request"))
    # webrtc_id on every route
    for label, bad in BAD_IDS:
        if bad != "x\n":  # well formed to the id check's regex: an offer with it would be answered (ACCEPTED group)
            cases.append(_post(f"webrtc_id {label}", offer, lambda ctx, bad=bad: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": bad}), 400, "bad_webrtc_id"))
        cases.append(_post(f"ice-candidate webrtc_id {label}", offer, dumps({"type": "ice-candidate", "webrtc_id": bad, "candidate": {"candidate": LOOPBACK_CANDIDATE, "sdpMid": "0"}}), 400, "bad_webrtc_id"))
        cases.append(_post(f"webrtc_id {label}", "/webrtc/input", dumps({"webrtc_id": bad, "args": [1]}), 400, "bad_webrtc_id"))
        cases.append(_post(f"webrtc_id {label}", "/webrtc/close", dumps({"webrtc_id": bad}), 400, "bad_webrtc_id"))
        cases.append(_post(f"webrtc_id {label}", "/webrtc/outputs", dumps({"webrtc_id": bad}), 400, "bad_webrtc_id"))
        if isinstance(bad, str):
            cases.append(Case(f"GET /webrtc/outputs webrtc_id {label}", "GET", "/webrtc/outputs", None, 400, "bad_webrtc_id", headers={}, params={"webrtc_id": bad}))
    cases.append(_post("webrtc_id missing", offer, lambda ctx: dumps({"type": "offer", "sdp": ctx.sdp}), 400, "bad_webrtc_id"))
    for route in ("/webrtc/close", "/webrtc/outputs"):
        cases.append(_post("webrtc_id missing", route, b"{}", 400, "bad_webrtc_id"))
    cases.append(Case("GET /webrtc/outputs no webrtc_id", "GET", "/webrtc/outputs", None, 400, "bad_webrtc_id", headers={}))
    # ids that are well formed but name no session
    for label, unknown in [("unknown", "nobody"), (f"{MAX_WEBRTC_ID_CHARS} chars", "d" * MAX_WEBRTC_ID_CHARS), ("dots", "..."), ("colons", "a:b:c")]:
        cases.append(_post(f"ice-candidate for an {label} id", offer, dumps({"type": "ice-candidate", "webrtc_id": unknown, "candidate": {"candidate": LOOPBACK_CANDIDATE, "sdpMid": "0"}}), 404, "unknown_webrtc_id"))
        cases.append(_post(f"{label} id", "/webrtc/input", dumps({"webrtc_id": unknown, "args": [1], "session_key": "k"}), 404, "unknown_webrtc_id"))
        cases.append(_post(f"{label} id", "/webrtc/close", dumps({"webrtc_id": unknown, "session_key": "k"}), 404, "unknown_webrtc_id"))
        cases.append(_post(f"{label} id", "/webrtc/outputs", dumps({"webrtc_id": unknown, "session_key": "k"}), 404, "unknown_webrtc_id"))
        cases.append(Case(f"GET /webrtc/outputs {label} id", "GET", "/webrtc/outputs", None, 404, "unknown_webrtc_id", headers={"x-session-key": "k"}, params={"webrtc_id": unknown}))
    # the victim's own id in a new offer
    cases.append(_post("the victim's webrtc_id again", offer, lambda ctx: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": ctx.victim}), 409, "duplicate_webrtc_id"))
    # (with its key it is the victim's own resume, a new peer connection in its place:
    # tests/media/test_resume.py, not a hostile input)
    # sdp of the wrong type
    for label, sdp in [("missing", ...), ("null", None), ("int", 1), ("list", ["v=0"]), ("object", {"sdp": "v=0"}), ("empty", ""), ("true", True), ("'v=0' alone", "v=0\r\n"), ("garbage", GARBAGE)]:
        def body(ctx: Ctx, sdp: Any = sdp) -> bytes:
            b: dict[str, Any] = {"type": "offer", "webrtc_id": "fz-sdp-type"}
            if sdp is not ...:
                b["sdp"] = sdp
            return dumps(b)

        cases.append(_post(f"sdp {label}", offer, body, 400, "bad_sdp"))
    # stream_id
    for label, stream in [("unknown", "nope"), ("int", 1), ("list", ["fuzz"]), ("empty", ""), ("object", {}), ("true", True)]:
        cases.append(_post(f"stream_id {label}", offer, lambda ctx, stream=stream: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": "fz-stream", "stream_id": stream}), 404, "unknown_stream"))
    # the SDP of a stream's wrong kind: an audio-only offer to a video stream
    cases.append(_post("an offer without video", offer, lambda ctx: dumps({"type": "offer", "sdp": _audio_only(ctx.sdp), "webrtc_id": "fz-audio"}), 400, "offer_lacks_media"))
    # input's args
    for label, args in [("missing", ...), ("null", None), ("int", 1), ("string", "x"), ("object", {"a": 1}), ("true", True)]:
        def body(ctx: Ctx, args: Any = args) -> bytes:
            b: dict[str, Any] = {"webrtc_id": ctx.victim, "session_key": ctx.key}
            if args is not ...:
                b["args"] = args
            return dumps(b)

        cases.append(_post(f"victim's args {label}, with its key", "/webrtc/input", body, 400, "bad_request"))
    # requests about the victim without its key: 403, and nothing changes
    for route in POST_ROUTES:
        for label, key, reason in BAD_KEYS:
            cases.append(_post(f"victim, {label}", route, lambda ctx, route=route, key=key: _victim_body(route, ctx, key), 403, reason))
        for label, spoil in VICTIM_KEY_VARIANTS:
            cases.append(_post(f"victim, {label}", route, lambda ctx, route=route, spoil=spoil: _victim_body(route, ctx, spoil(ctx.key)), 403, "bad_session_key"))
        # the body's key wins over the header's: a wrong body key with the right header
        cases.append(_post(
            "victim, wrong body key and the right X-Session-Key", route, lambda ctx, route=route: _victim_body(route, ctx, "A" * 32),
            403, "bad_session_key", headers=lambda ctx: {**JSON_CT, "x-session-key": ctx.key},
        ))  # fmt: skip
        cases.append(_post(
            "victim, null body key and the right X-Session-Key", route, lambda ctx, route=route: _victim_body(route, ctx, None),
            403, "session_key_required", headers=lambda ctx: {**JSON_CT, "x-session-key": ctx.key},
        ))  # fmt: skip
        for label, value in [("wrong", "A" * 32), ("10 KB", "k" * 10_240), ("non-base64", "!!!")]:
            cases.append(_post(
                f"victim, X-Session-Key {label}", route, lambda ctx, route=route: _victim_body(route, ctx, ...),
                403, "bad_session_key", headers={**JSON_CT, "x-session-key": value},
            ))  # fmt: skip
    for label, value, reason in [("none", None, "session_key_required"), ("empty", "", "session_key_required"), ("wrong", "A" * 32, "bad_session_key"), ("10 KB", "k" * 10_240, "bad_session_key")]:
        headers = {} if value is None else {"x-session-key": value}
        cases.append(Case(f"GET /webrtc/outputs victim, X-Session-Key {label}", "GET", "/webrtc/outputs", None, 403, reason, headers=headers, params=lambda ctx: {"webrtc_id": ctx.victim}))
    # the key in the URL is refused before anything else, right key or not
    for label, params in [
        ("victim's key", lambda ctx: {"webrtc_id": ctx.victim, "session_key": ctx.key}), ("a wrong key", lambda ctx: {"webrtc_id": ctx.victim, "session_key": "x"}),
        ("an empty key", lambda ctx: {"webrtc_id": ctx.victim, "session_key": ""}), ("no id", lambda ctx: {"session_key": ctx.key}),
        ("a bad id", lambda ctx: {"webrtc_id": "bad id!", "session_key": "x"}),
    ]:  # fmt: skip
        cases.append(Case(f"GET /webrtc/outputs session_key in the URL, {label}", "GET", "/webrtc/outputs", None, 400, "session_key_in_url", headers={}, params=params))
    cases.append(_post("session_key in the URL", "/webrtc/outputs", lambda ctx: _victim_body("/webrtc/outputs", ctx, ctx.key), 400, "session_key_in_url", params=lambda ctx: {"session_key": ctx.key}))
    return cases


def _audio_only(sdp: str) -> str:
    """The offer with its video section made an audio one (Opus, so only the kind is wrong)."""
    return sdp.replace("m=video", "m=audio", 1).replace("VP8/90000", "opus/48000/2", 1)


# --- headers ----------------------------------------------------------------------------------

GET_ROUTES = ("/webrtc/streams", "/webrtc/sessions", "/webrtc/outputs", "/webrtc/queue")


def header_cases() -> list[Case]:
    cases: list[Case] = []
    origins = [
        ("a foreign site", FOREIGN_ORIGIN), ("null", "null"), ("localhost as a subdomain", "http://localhost.evil.example"),
        ("loopback as a subdomain", "http://127.0.0.1.evil.example"), ("a path", "http://127.0.0.1/x"), ("a user", "http://127.0.0.1@evil.example"),
        ("file", "file://"), ("garbage", GARBAGE), ("8 KB", "https://" + "e" * 8000 + ".example"), ("a bad port", "http://localhost:99999"),
    ]  # fmt: skip
    for label, origin in origins:
        for route in POST_ROUTES:
            cases.append(_post(
                f"Origin {label}", route, lambda ctx, route=route: _victim_body(route, ctx, ctx.key) if route != "/webrtc/offer" else dumps(_valid_body(route, ctx.sdp, "fz-origin")),
                403, "origin_not_allowed", headers={**JSON_CT, "origin": origin},
            ))  # fmt: skip
        for route in GET_ROUTES:
            cases.append(Case(f"GET {route} Origin {label}", "GET", route, None, 403, "origin_not_allowed", headers={"origin": origin}, params=lambda ctx: {"webrtc_id": ctx.victim}))
        for route in QUEUE_POST_ROUTES:
            cases.append(_post(f"Origin {label}", route, dumps(_valid_body(route, "", "fz-origin")), 403, "origin_not_allowed", headers={**JSON_CT, "origin": origin}))
    # the origin is checked before anything in the body: a foreign page learns nothing
    cases.append(_post("Origin foreign, body nested 5000 deep", "/webrtc/offer", nested_list(5000).encode(), 403, "origin_not_allowed", headers={**JSON_CT, "origin": FOREIGN_ORIGIN}))
    cases.append(_post("Origin foreign, oversized body", "/webrtc/input", b" " * (MAX_INPUT_BYTES + 1), 403, "origin_not_allowed", headers={**JSON_CT, "origin": FOREIGN_ORIGIN}))
    # the probes answer whoever asks (a load balancer sends no Origin, a page may)
    cases.append(Case("GET /webrtc/health Origin foreign", "GET", "/webrtc/health", None, 200, None, headers={"origin": FOREIGN_ORIGIN}, plain=True))
    # 20 KB header values reach the routes (h11 takes a head that arrives whole)
    for label, headers, status, reason in [
        ("a 20 KB header", {"x-junk": "j" * 20_000}, 403, "session_key_required"),
        ("a 20 KB X-Session-Key", {"x-session-key": "k" * 20_000}, 403, "bad_session_key"),
        ("a 20 KB Origin", {"origin": "https://" + "e" * 20_000}, 403, "origin_not_allowed"),
    ]:  # fmt: skip
        cases.append(_post(f"{label}, victim", "/webrtc/close", lambda ctx: _victim_body("/webrtc/close", ctx, ...), status, reason, headers={**JSON_CT, **headers}))
    # 100 KB ones too: uvicorn (h11, as configured by the tests' server) sets no bound on a
    # request's head that arrives whole; a production proxy in front does
    for label, headers in [("a 100 KB header", {"x-junk": "j" * 100_000}), ("a 100 KB X-Session-Key", {"x-session-key": "k" * 100_000})]:
        reason = "bad_session_key" if "x-session-key" in headers else "session_key_required"
        cases.append(_post(f"{label}, victim", "/webrtc/close", lambda ctx: _victim_body("/webrtc/close", ctx, ...), 403, reason, headers={**JSON_CT, **headers}))
    # huge and odd headers on a request that is refused for its body: the body's reason
    for label, headers in [
        ("an 8 KB header", {"x-junk": "j" * 8192}), ("100 headers", {f"x-h{i}": "v" for i in range(100)}),
        ("a Bearer token (auth is off)", {"authorization": "Bearer " + "t" * 4000}), ("Basic auth garbage", {"authorization": "Basic !!!"}),
        ("cookies", {"cookie": "a=" + "c" * 4000}), ("a forwarded-for list", {"x-forwarded-for": ", ".join(["10.0.0.1"] * 500)}),
        ("a local Origin", {"origin": "http://localhost:1234"}), ("an empty header", {"x-empty": ""}),
    ]:  # fmt: skip
        cases.append(_post(f"{label}, victim without its key", "/webrtc/close", lambda ctx: _victim_body("/webrtc/close", ctx, ...), 403, "session_key_required", headers={**JSON_CT, **headers}))
        cases.append(_post(f"{label}, body nested 5000 deep", "/webrtc/offer", nested_list(5000).encode(), 400, "json_too_deep", headers={**JSON_CT, **headers}))
    return cases


# --- ICE candidates for the victim, with its key ------------------------------------------------


def _candidate(text: Any, mid: Any = "0", index: Any = 0) -> dict[str, Any]:
    return {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index}


def candidate_cases() -> list[Case]:
    """In order, with the victim's key. Every non-empty string candidate counts against
    its budget of MAX_CANDIDATES_PER_SESSION, refused or not (engine.add_candidate takes
    one before checking it); past the budget each is too_many_candidates."""
    host = "candidate:1 1 udp 2130706431 {} 9 typ host"
    rows: list[tuple[str, Any, int, str, bool]] = []  # label, candidate field, status, reason, consumes

    def forbidden(label: str, address: str) -> None:
        rows.append((label, _candidate(host.format(address)), 400, "forbidden_candidate_address", True))

    forbidden("metadata 169.254.169.254", "169.254.169.254")
    forbidden("link-local 169.254.0.1", "169.254.0.1")
    forbidden("IPv6 link-local fe80::1", "fe80::1")
    forbidden("IPv4-mapped metadata", "::ffff:169.254.169.254")
    forbidden("multicast 224.0.0.1", "224.0.0.1")
    forbidden("multicast 239.255.255.250", "239.255.255.250")
    forbidden("IPv6 multicast ff02::1", "ff02::1")
    forbidden("unspecified 0.0.0.0", "0.0.0.0")
    forbidden("this network 0.1.2.3", "0.1.2.3")
    forbidden("IPv6 unspecified ::", "::")
    forbidden("reserved 240.0.0.1", "240.0.0.1")
    forbidden("broadcast 255.255.255.255", "255.255.255.255")
    forbidden("site-local fec0::1", "fec0::1")
    forbidden("a DNS name", "metadata.google.internal")
    forbidden("a name with a NUL", "127.0.0.1\x00")
    forbidden("an IP with a zone", "fe80::1%eth0")
    forbidden("a 1000-char name", "h" * 900)
    rows += [
        ("garbage", _candidate("garbage"), 400, "bad_candidate", True),
        ("just the prefix", _candidate("candidate:"), 400, "bad_candidate", True),
        ("a 2000-char string", _candidate("c" * 2000), 400, "bad_candidate", True),
        ("a 2000-char well-formed candidate", _candidate(host.format("127.0.0.1") + " x" * 1000), 400, "bad_candidate", True),
        ("no 'typ'", _candidate("candidate:1 1 udp 1 127.0.0.1 9 tip host"), 400, "bad_candidate", True),
        ("port 99999", _candidate("candidate:1 1 udp 1 127.0.0.1 99999 typ host"), 400, "bad_candidate", True),
        ("port -1", _candidate("candidate:1 1 udp 1 127.0.0.1 -1 typ host"), 400, "bad_candidate", True),
        ("port 'x'", _candidate("candidate:1 1 udp 1 127.0.0.1 x typ host"), 400, "bad_candidate", True),
        ("component 0", _candidate("candidate:1 0 udp 1 127.0.0.1 9 typ host"), 400, "bad_candidate", True),
        ("component 300", _candidate("candidate:1 300 udp 1 127.0.0.1 9 typ host"), 400, "bad_candidate", True),
        ("priority 'x'", _candidate("candidate:1 1 udp x 127.0.0.1 9 typ host"), 400, "bad_candidate", True),
        # RFC 8445: a priority is 1..2**31-1; sdp_check refuses an a=candidate one of over 10 digits
        ("a 100-digit priority", _candidate(f"candidate:1 1 udp {'9' * 100} 127.0.0.1 9 typ host"), 400, "bad_candidate", True),
        ("transport sctp", _candidate("candidate:1 1 sctp 1 127.0.0.1 9 typ host"), 400, "bad_candidate", True),
        ("type bogus", _candidate("candidate:1 1 udp 1 127.0.0.1 9 typ bogus"), 400, "bad_candidate", True),
        ("rport 'y'", _candidate("candidate:1 1 udp 1 127.0.0.1 9 typ srflx raddr 1.2.3.4 rport y"), 400, "bad_candidate", True),
        ("seven fields", _candidate("candidate:1 1 udp 1 127.0.0.1 9 typ"), 400, "bad_candidate", True),
        # well formed, loopback (allowed in the local config) or mDNS: accepted, and ignored
        # (the victim's offer said end-of-candidates: aiortc takes no more, resolves nothing)
        ("loopback after end-of-candidates", _candidate(host.format("127.0.0.1")), 200, SUCCESS, True),
        ("IPv6 loopback after end-of-candidates", _candidate(host.format("::1")), 200, SUCCESS, True),
        ("an mDNS name after end-of-candidates", _candidate(host.format("0b0b0b0b-1111-2222-3333-444444444444.local")), 200, SUCCESS, True),
        ("loopback, U+2028 for a space", _candidate(host.format("127.0.0.1").replace(" 9 ", "\u20289 ")), 200, SUCCESS, True),
        ("loopback, no sdpMid nor sdpMLineIndex", _candidate(host.format("127.0.0.1"), None, None), 400, "bad_candidate", True),
        ("a bare string", host.format("127.0.0.1"), 400, "bad_candidate", True),
        # not strings: refused before they count
        ("an int", 5, 400, "bad_candidate", False),
        ("a list", ["candidate:1"], 400, "bad_candidate", False),
        ("candidate field an int", _candidate(5), 400, "bad_candidate", False),
        ("candidate field a list", _candidate([host.format("127.0.0.1")]), 400, "bad_candidate", False),
        ("candidate field an object", _candidate({"candidate": "x"}), 400, "bad_candidate", False),
        ("candidate field true", _candidate(True), 400, "bad_candidate", False),
        # end of candidates, in its forms: nothing to add
        ("null (end of candidates)", None, 200, SUCCESS, False),
        ("empty candidate", _candidate(""), 200, SUCCESS, False),
        ("candidate field null", _candidate(None), 200, SUCCESS, False),
        ("an object without a candidate", {"sdpMid": "0"}, 200, SUCCESS, False),
        ("empty string", "", 200, SUCCESS, False),
    ]
    cases = [
        _post(f"victim candidate: {label}", "/webrtc/offer", _victim_candidate(cand), status, reason, group=CANDIDATES, consumes_candidate=consumes)
        for label, cand, status, reason, consumes in rows
    ]
    used = sum(1 for c in cases if c.consumes_candidate)
    # fill the budget, then go over it: refused, whatever the candidate
    for n in range(used, MAX_CANDIDATES_PER_SESSION):
        cases.append(_post(f"victim candidate #{n + 1} (in budget)", "/webrtc/offer", _victim_candidate(_candidate(host.format("127.0.0.1"))), 200, SUCCESS, group=CANDIDATES, consumes_candidate=True))
    for n, (label, text) in enumerate([("loopback", host.format("127.0.0.1")), ("metadata", host.format("169.254.169.254")), ("garbage", "garbage")] * 4):
        cases.append(_post(f"victim candidate #{MAX_CANDIDATES_PER_SESSION + n + 1} ({label}, over budget)", "/webrtc/offer", _victim_candidate(_candidate(text)), 400, "too_many_candidates", group=CANDIDATES, consumes_candidate=True))
    cases.append(_post("victim candidate over budget, an int", "/webrtc/offer", _victim_candidate(5), 400, "bad_candidate", group=CANDIDATES))
    cases.append(_post("victim candidate over budget, null", "/webrtc/offer", _victim_candidate(None), 200, SUCCESS, group=CANDIDATES))
    return cases


def _victim_candidate(candidate: Any) -> Callable[[Ctx], bytes]:
    return lambda ctx: dumps({"type": "ice-candidate", "webrtc_id": ctx.victim, "session_key": ctx.key, "candidate": candidate})


# --- inputs the victim may send (each counts against its input rate) ------------------------------


def input_cases() -> list[Case]:
    """Values JSON can carry in the victim's args, with its key: accepted (and reach the
    worker, whose handler ignores its inputs), or refused with a 400 that changes nothing.
    A handful, run in order: each accepted post counts against the input rate (20/s,
    burst 40)."""
    accepted = [
        ("empty", []), ("a null value", [None]), ("unicode", ["\u2028\u2029\U0001f600"]), ("deep but within bounds", json.loads(nested_list(MAX_JSON_DEPTH - 2))),
        ("a 64-digit float", [float("0." + "1" * 62)]), ("a 1e-999", [0.0]), ("the largest int64", [2**63 - 1]), ("the smallest int64", [-(2**63)]),
        ("the largest uint64", [2**64 - 1]), ("a 500 KB string", ["s" * 500_000]), ("10,000 values", [0] * 10_000),
    ]  # fmt: skip
    cases = [
        _post(f"victim's args {label}, with its key", "/webrtc/input", lambda ctx, args=args: dumps({"webrtc_id": ctx.victim, "session_key": ctx.key, "args": args}), 200, SUCCESS, group=INPUTS)
        for label, args in accepted
    ]
    # integers JSON and safejson allow but msgpack cannot carry to the worker: a 400, not a 500
    for label, number in [("2**64", 2**64), ("-(2**63) - 1", -(2**63) - 1), ("a 30-digit int", 10**30), ("a 64-digit int", int("9" * 64))]:
        cases.append(_post(
            f"victim's args {label}, with its key", "/webrtc/input",
            lambda ctx, number=number: dumps({"webrtc_id": ctx.victim, "session_key": ctx.key, "args": [number]}),
            400, "bad_request", group=INPUTS,
        ))  # fmt: skip
    return cases


# --- accepted offers that are not SDP mutations ------------------------------------------------


def accepted_offer_cases() -> list[Case]:
    cases = []
    for label, extra in [
        ("unknown fields", {"pad": "p" * 1000, "nested": json.loads(nested_list(MAX_JSON_DEPTH - 2))}),
        ("its stream_id", {"stream_id": "fuzz"}),
        ("a stream_id of null", {"stream_id": None}),
    ]:
        webrtc_id = f"fz-extra-{len(cases)}"
        cases.append(_post(
            f"valid offer with {label}", "/webrtc/offer",
            lambda ctx, extra=extra, webrtc_id=webrtc_id: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": webrtc_id, **extra}),
            200, OK, group=ACCEPTED, webrtc_id=webrtc_id,
        ))  # fmt: skip
    # a session_key makes an offer a resume (docs/failover.md): of no session, a 404
    cases.append(_post(
        "valid offer with a session_key of its own: a resume of nothing", "/webrtc/offer",
        lambda ctx: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": "fz-own-key", "session_key": "mine"}),
        404, "not_resumable", group=ACCEPTED,
    ))  # fmt: skip
    webrtc_id = "fz-ct-params"
    cases.append(_post(
        "valid offer, content-type with a charset and upper case", "/webrtc/offer",
        lambda ctx: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": "fz-ct-params"}), 200, OK,
        headers={"content-type": "Application/JSON; charset=utf-8"}, group=ACCEPTED, webrtc_id=webrtc_id,
    ))  # fmt: skip
    # a webrtc_id with a trailing newline is not 1-128 characters of [A-Za-z0-9_.:-]
    cases.append(_post(
        "valid offer with webrtc_id 'fz-newline\\n'", "/webrtc/offer",
        lambda ctx: dumps({"type": "offer", "sdp": ctx.sdp, "webrtc_id": "fz-newline\n"}), 400, "bad_webrtc_id",
        group=ACCEPTED, webrtc_id="fz-newline\n",
    ))  # fmt: skip
    return cases


# --- the Twilio webhook ------------------------------------------------------------------------

FORM_CT = {"content-type": "application/x-www-form-urlencoded"}
MAX_WEBHOOK_BYTES = 64 * 1024  # runtime/front/websocket_routes.py MAX_MESSAGE_BYTES


def telephone_cases() -> list[Case]:
    """POST /telephone/incoming: a form from Twilio; its failures are JSON like the others'
    (its successes are TwiML, checked in tests/front/test_telephone.py)."""
    route = "/telephone/incoming"
    cases = [
        Case("telephone: body over 64 KB", "POST", route, b"a=" + b"x" * MAX_WEBHOOK_BYTES, 413, "body_too_large", headers=dict(FORM_CT)),
        Case("telephone: unknown stream_id", "POST", route, b"CallSid=CA1", 404, "unknown_stream", headers=dict(FORM_CT), params={"stream_id": "no-such-stream"}),
        Case("telephone: stream_id garbage", "POST", route, b"CallSid=CA1", 404, "unknown_stream", headers=dict(FORM_CT), params={"stream_id": GARBAGE}),
    ]  # fmt: skip
    for label, host in [("a quote", 'h"x'), ("markup", "<a>"), ("a space", "a b"), ("a path", "a/b"), ("empty", "")]:
        cases.append(Case(f"telephone: Host {label}", "POST", route, b"CallSid=CA1", 400, "bad_host", headers={**FORM_CT, "host": host}))
    return cases


def http_cases(sdp: str) -> list[Case]:
    return sdp_cases(sdp) + json_cases(sdp) + field_cases() + header_cases() + candidate_cases() + input_cases() + accepted_offer_cases() + telephone_cases()


# --- the data channel -------------------------------------------------------------------------

WARN = "warning"
PONG = "pong"
DC_OVERFLOW_LABEL = "set_input [2**64]"


def data_channel_cases() -> list[tuple[str, str | bytes, str]]:
    """(label, message, what comes back): every hostile message gets one warning back."""
    big = MAX_DATA_CHANNEL_MESSAGE_BYTES
    rows: list[tuple[str, str | bytes, str]] = [
        ("not JSON", "{not json", WARN), ("empty text", "", WARN), ("a space", " ", WARN), ("undefined", "undefined", WARN),
        ("single quotes", "{'type': 'ping'}", WARN), ("a cut list", "[1, 2", WARN), ("a NUL", "\x00", WARN), ("a BOM", '\ufeff{"type": "ping"}', WARN),
        ("two objects", '{"type": "ping"}{"type": "ping"}', WARN), ("a trailing comma", '{"type": "ping",}', WARN),
        ("NaN", '{"type": "ping", "data": NaN}', WARN), ("Infinity", '{"type": "ping", "data": Infinity}', WARN),
        ("-Infinity", '{"type": "ping", "data": -Infinity}', WARN), ("1e999", '{"type": "ping", "data": 1e999}', WARN),
        ("a 100-digit int", '{"type": "ping", "data": ' + "9" * 100 + "}", WARN), ("a 10000-digit int", '{"type": "ping", "data": ' + "9" * 10_000 + "}", WARN),
        ("a 70-digit fraction", '{"type": "ping", "data": 0.' + "1" * 70 + "}", WARN),
        ("a lone surrogate", '{"type": "ping", "data": "\\ud800"}', WARN), ("a lone surrogate key", '{"type": "ping", "\\udfff": 1}', WARN),
        ("a lone surrogate type", '{"type": "\\ud800"}', WARN),
        ("no type", "{}", WARN), ("only data", '{"data": 1}', WARN), ("type 1", '{"type": 1}', WARN), ("type null", '{"type": null}', WARN),
        ("type list", '{"type": ["ping"]}', WARN), ("type object", '{"type": {"a": 1}}', WARN), ("type true", '{"type": true}', WARN),
        ("type 1.5", '{"type": 1.5}', WARN), ("a number", "1", WARN), ("a string", '"ping"', WARN), ("a list", "[]", WARN),
        ("null", "null", WARN), ("true", "true", WARN), ("a list of a ping", '[{"type": "ping"}]', WARN),
        ("unknown type", '{"type": "x"}', WARN), ("empty type", '{"type": ""}', WARN), ("a 1000-char type", json.dumps({"type": "t" * 1000}), WARN),
        ("type 'PING'", '{"type": "PING"}', WARN), ("type U+2028", '{"type": "\u2028"}', WARN), ("type 'end_stream'", '{"type": "end_stream"}', WARN),
        ("type 'send_input'", '{"type": "send_input"}', WARN), ("type '__proto__'", '{"type": "__proto__"}', WARN),
        ("set_input data 1", '{"type": "set_input", "data": 1}', WARN), ("set_input data a string", '{"type": "set_input", "data": "x"}', WARN),
        ("set_input data null", '{"type": "set_input", "data": null}', WARN), ("set_input no data", '{"type": "set_input"}', WARN),
        ("set_input data an object", '{"type": "set_input", "data": {"0": 1}}', WARN), ("set_input data true", '{"type": "set_input", "data": true}', WARN),
        ("set_input data NaN", '{"type": "set_input", "data": [NaN]}', WARN), ("set_input nested 5000", '{"type": "set_input", "data": ' + nested_list(5000) + "}", WARN),
        (f"{big + 1} chars", "x" * (big + 1), WARN), ("70 KB of JSON", json.dumps({"type": "ping", "data": "p" * 70_000}), WARN),
        ("binary", b"\x00\x01binary", WARN), ("binary JSON", b'{"type": "ping"}', WARN), ("binary 0xff", b"\xff" * 10, WARN),
        ("binary 70 KB", b"\x00" * 70_000, WARN), ("empty binary", b"", WARN),
    ]  # fmt: skip
    for depth in (MAX_JSON_DEPTH + 1, 100, 1000, 5000, 20_000):
        rows.append((f"nested {depth} deep (lists)", nested_list(depth), WARN))
        rows.append((f"nested {depth} deep (objects)", nested_dict(depth), WARN))
        rows.append((f"ping with data nested {depth} deep", '{"type": "ping", "data": ' + nested_list(depth) + "}", WARN))
    for n in range(40):
        rows.append((f"garbage #{n}", GARBAGE * (n + 1), WARN))
    # well-formed pings still answered, mixed in: the channel keeps working
    rows += [("ping", '{"type": "ping", "data": 1}', PONG), ("ping with 1e-999", '{"type": "ping", "data": 1e-999}', PONG),
             ("ping nested 31 deep", '{"type": "ping", "data": ' + nested_list(MAX_JSON_DEPTH - 1) + "}", PONG)]  # fmt: skip
    # inputs JSON allows but msgpack cannot carry: warned ("inputs cannot reach the worker"), last
    # because a failure here is an exception in aiortc's message callback
    rows += [(DC_OVERFLOW_LABEL, '{"type": "set_input", "data": [' + str(2**64) + "]}", WARN),
             ("ping after it", '{"type": "ping", "data": 2}', PONG)]  # fmt: skip
    return rows
