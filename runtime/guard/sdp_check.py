"""An SDP offer checked before the gateway spends anything on it.

A lease, a worker and an aiortc peer connection are taken only for an offer that passes
:func:`check_offer_sdp`; anything else is an :class:`~runtime.errors.Refused` (400) with a
reason the client can act on (``bad_sdp``, ``too_many_media_sections``, ``too_many_tracks``,
``unsupported_media``, ``unsupported_protocol``, ``unsupported_codec``, ``rtcp_mux_required``,
``bad_ice_credentials``, ``bad_fingerprint``, ``bad_dtls_setup``, ``too_many_ssrcs``,
``too_many_candidates``, ``sdp_too_large``, ``sdp_line_too_long``).

Two aims. The first is the gateway's own policy: media it can serve (Opus audio, VP8 video,
data channels over DTLS/SCTP), ICE and DTLS parameters a connection can use, and bounds on
what an offer may make the server hold. The second is that aiortc's own parser
(``aiortc.sdp.SessionDescription.parse``, run inside ``setRemoteDescription`` after the
lease is taken) never fails on an offer that passed here: every line aiortc reads with
``int()``, ``split()`` or a table lookup is checked here against the form aiortc expects,
so a malformed offer costs nothing. ``tests/guard/test_sdp_check.py`` mutates real
offers at every line and holds this to both aims.

Everything here is linear in the offer's size: no regular expression backtracks, and the
per-section counts (payload types, SSRCs, candidates) are bounded, because aiortc's parser
is quadratic in some of them (it looks up each ``a=ssrc`` and ``a=fmtp`` line in a list).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc.sdp import H264Profile, parse_h264_profile_level_id

from runtime import constants as C
from runtime.errors import ErrorCode, Refused

MAX_MEDIA_SECTIONS = 8  # m-sections an offer may carry (audio + video + data is 3)
# media tracks an offer may send: each sending audio/video section is one (aiortc makes a
# track per section), or as many as it names distinct a=msid / a=ssrc msid tracks if more
MAX_TRACKS = 4
MAX_SDP_LINE_CHARS = 1024  # characters per line; Chromium's longest (a video m= line) is ~140
MAX_SSRCS_PER_SECTION = 16  # distinct a=ssrc ids per m-section (simulcast x3 with RTX is 6)
MAX_CANDIDATES_PER_SECTION = 32  # a=candidate lines per m-section (aiortc offers one per interface)
MAX_PAYLOAD_TYPE = 127  # RTP payload types are 7 bits (RFC 3550)
FORBIDDEN_PAYLOAD_TYPES = range(72, 77)  # they collide with RTCP packet types (RFC 5761); aiortc refuses them
MAX_SSRC = 2**32 - 1
MAX_EXTMAP_ID = 255  # two-byte RTP header extensions go up to 255 (RFC 8285)
MAX_DIGITS = 10  # digits of any number read here: bounds int() and fits a 32-bit SSRC
MESSAGE_ECHO_CHARS = 40  # at most this much of the client's text is echoed in a reason

MEDIA_KINDS = ("audio", "video", "application")
RTP_PROTOCOLS = ("UDP/TLS/RTP/SAVPF", "RTP/SAVPF")  # what browsers and aiortc offer for RTP
SCTP_PROTOCOLS = ("UDP/DTLS/SCTP", "DTLS/SCTP")  # RFC 8841, and the pre-RFC form
LEGACY_SCTP_PROTOCOL = "DTLS/SCTP"  # its format is the SCTP port (aiortc reads it with int())
DATACHANNEL_FORMAT = "webrtc-datachannel"
# codecs the gateway decodes, as (encoding name lower-cased, clock rate in Hz); video: the
# ones gateway.video_codecs names, H.264 only in a form served (serves_h264)
SERVED_AUDIO_CODEC = ("opus", 48_000)
VIDEO_CLOCK_RATE = 90_000
H264_PACKETIZATION_MODE = "1"  # non-interleaved: single NAL, STAP-A, FU-A (aiortc's only)
# the H.264 profiles aiortc offers and the gateway's encoder and guard serve (4:2:0, 8 bits)
SERVED_H264_PROFILES = frozenset({H264Profile.PROFILE_CONSTRAINED_BASELINE, H264Profile.PROFILE_BASELINE})
AIORTC_DEFAULT_PROFILE_LEVEL_ID = "42E01F"  # what aiortc assumes when an offer names none
# RFC 8122's hashes that aiortc's DTLS verifies (sha-1 and sha-224 would pass here and fail at DTLS)
FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
DTLS_SETUP_VALUES = ("actpass", "active", "passive")  # the ones aiortc knows (no holdconn)
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
SENDING_DIRECTIONS = ("sendrecv", "sendonly")  # the offerer sends media in these: its tracks count
SDP_LINE_TYPES = frozenset("vosiuepcbtrzkam")  # RFC 8866 section 5; others are refused
# fmtp parameters aiortc converts with int() (aiortc.sdp.FMTP_INT_PARAMETERS; a test keeps
# this a superset of aiortc's, so an upgrade that adds one fails there, not in production)
FMTP_INT_PARAMETERS = frozenset({"apt", "max-fr", "max-fs", "maxplaybackrate", "minptime", "stereo", "useinbandfec"})

# Characters no SDP line may hold. CR and LF end lines; every other C0 and C1 control, DEL,
# and U+2028/U+2029 are refused: str.splitlines() (which aiortc uses to split an offer)
# also breaks lines at \x0b \x0c \x1c-\x1e \x85 U+2028 U+2029, so one of them inside a
# value would smuggle a line (an extra m-section, say) past a check that split on LF.
_FORBIDDEN_CHARS = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_STRAY_CR = re.compile("\r(?!\n)")
_NUMBER = f"[0-9]{{1,{MAX_DIGITS}}}"
_TOKEN = "[!-~]+"  # printable ASCII, no space
_ICE_UFRAG = re.compile("[A-Za-z0-9+/]{4,256}")  # ice-char (RFC 8839 section 5.4)
_ICE_PWD = re.compile("[A-Za-z0-9+/]{22,256}")
_FINGERPRINT = re.compile("([A-Za-z0-9-]{1,16}) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){0,127})")
_CONNECTION = re.compile(f"IN IP[46] {_TOKEN}")
_RTPMAP = re.compile(f"({_NUMBER}) ([!-.0-~]+)/({_NUMBER})(?:/({_NUMBER}))?")  # name has no '/'
_FMTP = re.compile(f"({_NUMBER}) (.+)")
_RTCP_FB = re.compile(f"(\\*|{_NUMBER}) [^ ]+(?: .*)?")
_EXTMAP = re.compile(f"({_NUMBER})(?:/(?:{'|'.join(DIRECTIONS)}))? {_TOKEN}")  # aiortc: exactly two words
_RTCP = re.compile(f"({_NUMBER})(?: IN IP[46] {_TOKEN})?")
_SSRC = re.compile(f"({_NUMBER}) ([^ :]+):(.*)")  # aiortc needs the ':' of attribute:value
_SSRC_GROUP = re.compile(f"{_TOKEN}(?: {_NUMBER})*")
_SCTPMAP = re.compile(f"({_NUMBER}) .+")
_MSID = re.compile("([!-~]{1,64})(?: ([!-~]{1,64}))?")  # RFC 8830: 1*64 token chars, twice
_MID = re.compile("[!-~]{1,64}")
# foundation component transport priority address port "typ" type, then name/value pairs
_CANDIDATE = re.compile(
    f"{_TOKEN} ({_NUMBER}) {_TOKEN} ({_NUMBER}) {_TOKEN} ({_NUMBER}) typ [a-z]+((?: {_TOKEN} {_TOKEN})*)"
)


@dataclass(frozen=True)
class MediaSection:
    """One m-section of an accepted offer."""

    kind: str  # audio, video or application
    port: int  # 0: the offerer rejected the section
    protocol: str
    direction: str  # as offered (sendrecv when the section does not say)
    mid: str | None
    tracks: int  # distinct tracks the section announces


@dataclass(frozen=True)
class OfferSummary:
    """What an accepted offer asks for."""

    kinds: tuple[str, ...]  # one per m-section, in order: ("audio", "video", "application")
    tracks: int  # distinct media tracks over all sections
    sections: tuple[MediaSection, ...]


def check_offer_sdp(
    sdp: object,
    *,
    max_bytes: int,
    max_media_sections: int = MAX_MEDIA_SECTIONS,
    max_tracks: int = MAX_TRACKS,
    video_codecs: Sequence[str] = C.VIDEO_CODECS,
) -> OfferSummary:
    """Parse and check an SDP offer; raise ``Refused(code, message)`` if the gateway
    cannot or will not answer it, before any lease or worker is taken."""
    lines = _split_lines(sdp, max_bytes)
    session, sections = _group(lines, max_media_sections)
    _check_session_lines(session)
    parsed = [_check_section(index, block, video_codecs) for index, block in enumerate(sections)]
    _check_transport(session, parsed)
    _check_bundle(session, parsed)
    tracks = sum(section.tracks for section in parsed)
    if tracks > max_tracks:
        _refuse(ErrorCode.TOO_MANY_TRACKS, f"the offer announces {tracks} media tracks; at most {max_tracks} are served")
    summary = tuple(
        MediaSection(p.kind, p.port, p.protocol, p.direction or "sendrecv", p.mid, p.tracks) for p in parsed
    )
    return OfferSummary(tuple(s.kind for s in summary), tracks, summary)


def serves_h264(parameters: dict[str, Any]) -> bool:
    """Whether an H.264 rtpmap's fmtp ``parameters`` name a form the gateway decodes:
    packetization mode 1 and a baseline profile, read as aiortc reads them when it matches
    codecs (its parser; no profile-level-id means constrained baseline 3.1 there)."""
    if str(parameters.get("packetization-mode", "0")) != H264_PACKETIZATION_MODE:
        return False
    try:
        profile, _level = parse_h264_profile_level_id(str(parameters.get("profile-level-id", AIORTC_DEFAULT_PROFILE_LEVEL_ID)))
    except ValueError:
        return False
    return profile in SERVED_H264_PROFILES


# --- lines ----------------------------------------------------------------------------------


def _refuse(code: ErrorCode, message: str) -> None:
    raise Refused(code, message)


def _echo(text: str) -> str:
    """A short, quoted piece of the client's text for a message (never all of it)."""
    return repr(text[:MESSAGE_ECHO_CHARS] + ("..." if len(text) > MESSAGE_ECHO_CHARS else ""))


def _split_lines(sdp: object, max_bytes: int) -> list[str]:
    if not isinstance(sdp, str):
        _refuse(ErrorCode.BAD_SDP, "'sdp' must be a string holding an SDP offer")
    assert isinstance(sdp, str)
    # a str is at least one UTF-8 byte a character: a long one is refused before encoding it
    if len(sdp) > max_bytes:
        _refuse(ErrorCode.SDP_TOO_LARGE, f"the SDP is over {max_bytes} bytes")
    try:
        size = len(sdp.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 can carry
        _refuse(ErrorCode.BAD_SDP, "the SDP is not valid UTF-8 text")
    if size > max_bytes:
        _refuse(ErrorCode.SDP_TOO_LARGE, f"the SDP is {size} bytes; at most {max_bytes} are accepted")
    bad = _FORBIDDEN_CHARS.search(sdp) or _STRAY_CR.search(sdp)
    if bad is not None:
        _refuse(ErrorCode.BAD_SDP, f"the SDP holds control character U+{ord(bad.group()):04X} at offset {bad.start()}")
    lines = sdp.split("\n")
    while lines and lines[-1] in ("", "\r"):  # the terminator of the last line
        lines.pop()
    if not lines or lines[0].rstrip("\r") != "v=0":
        _refuse(ErrorCode.BAD_SDP, "an SDP offer starts with the line 'v=0'")
    out = []
    for number, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if len(line) > MAX_SDP_LINE_CHARS:
            _refuse(ErrorCode.SDP_LINE_TOO_LONG, f"SDP line {number} is over {MAX_SDP_LINE_CHARS} characters")
        if len(line) < 2 or line[1] != "=" or line[0] not in SDP_LINE_TYPES:
            _refuse(ErrorCode.BAD_SDP, f"SDP line {number} is not '<type>=<value>': {_echo(line)}")
        if line[0] == "v" and number != 1:
            _refuse(ErrorCode.BAD_SDP, f"SDP line {number}: 'v=' may only be the first line")
        out.append(line)
    return out


def _group(lines: list[str], max_media_sections: int) -> tuple[list[str], list[list[str]]]:
    count = sum(1 for line in lines if line.startswith("m="))
    if count == 0:
        _refuse(ErrorCode.BAD_SDP, "the offer has no media sections (m= lines)")
    if count > max_media_sections:
        _refuse(ErrorCode.TOO_MANY_MEDIA_SECTIONS, f"the offer has {count} media sections; at most {max_media_sections} are accepted")
    session: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            session.append(line)
    return session, sections


def _attribute(line: str) -> tuple[str, str | None]:
    """``a=name:value`` as aiortc splits it (name up to the first ':'; no ':' gives None)."""
    body = line[2:]
    if ":" in body:
        name, value = body.split(":", 1)
        return name, value
    return body, None


def _number(text: str, limit: int) -> int:
    """A number already matched as ASCII digits (so int() is safe), within 0..limit."""
    value = int(text)
    if value > limit:
        raise ValueError(f"{value} is over {limit}")
    return value


# --- attributes aiortc reads at either level --------------------------------------------------


def _need(pattern: re.Pattern[str]) -> Callable[[str | None], None]:
    def check(value: str | None) -> None:
        if value is None or pattern.fullmatch(value) is None:
            raise ValueError("malformed")

    return check


def _check_fingerprint(value: str | None) -> None:
    match = _FINGERPRINT.fullmatch(value or "")
    if match is None:
        _refuse(ErrorCode.BAD_FINGERPRINT, "a=fingerprint must be '<hash> <colon-separated hex>'")
    assert match is not None
    algorithm, digest = match.group(1).lower(), match.group(2)
    expected = FINGERPRINT_BYTES.get(algorithm)
    if expected is None:
        _refuse(ErrorCode.BAD_FINGERPRINT, f"a=fingerprint hash {_echo(algorithm)} is not one of {', '.join(FINGERPRINT_BYTES)}")
    if (len(digest) + 1) // 3 != expected:
        _refuse(ErrorCode.BAD_FINGERPRINT, f"a {algorithm} fingerprint has {expected} bytes, not {(len(digest) + 1) // 3}")


def _check_setup(value: str | None) -> None:
    if value not in DTLS_SETUP_VALUES:
        _refuse(ErrorCode.BAD_DTLS_SETUP, f"a=setup must be one of {', '.join(DTLS_SETUP_VALUES)}")


def _check_ufrag(value: str | None) -> None:
    if value is None or _ICE_UFRAG.fullmatch(value) is None:
        _refuse(ErrorCode.BAD_ICE_CREDENTIALS, "a=ice-ufrag must be 4 to 256 characters of A-Z a-z 0-9 + /")


def _check_pwd(value: str | None) -> None:
    if value is None or _ICE_PWD.fullmatch(value) is None:
        _refuse(ErrorCode.BAD_ICE_CREDENTIALS, "a=ice-pwd must be 22 to 256 characters of A-Z a-z 0-9 + /")


# attribute -> its check, for attributes aiortc reads at session and at media level; a
# check raises Refused with its own code, or ValueError for a plain bad_sdp
_COMMON_ATTRIBUTES: dict[str, Callable[[str | None], None]] = {
    "fingerprint": _check_fingerprint,
    "setup": _check_setup,
    "ice-ufrag": _check_ufrag,
    "ice-pwd": _check_pwd,
}


def _check_value(checks: dict[str, Callable[[str | None], None]], name: str, value: str | None, where: str) -> None:
    check = checks.get(name)
    if check is None:
        return
    try:
        check(value)
    except ValueError:
        _refuse(ErrorCode.BAD_SDP, f"{where}: a={name} is malformed")


def _check_connection(line: str, where: str) -> None:
    if _CONNECTION.fullmatch(line[2:]) is None:
        _refuse(ErrorCode.BAD_SDP, f"{where}: c= must be 'IN IP4 <address>' or 'IN IP6 <address>'")


def _check_session_lines(session: list[str]) -> None:
    for line in session:
        if line[0] == "c":
            _check_connection(line, "session")
        elif line[0] == "a":
            name, value = _attribute(line)
            _check_value(_COMMON_ATTRIBUTES, name, value, "session")


# --- media sections ---------------------------------------------------------------------------


@dataclass
class _Section:
    """An m-section while it is checked (mutable: filled line by line)."""

    index: int
    kind: str
    port: int
    protocol: str
    formats: list[str]
    direction: str | None = None
    mid: str | None = None
    rtcp_mux: bool = False
    tracks: int = 0
    ufrag: bool = False
    pwd: bool = False
    fingerprint: bool = False
    setup: bool = False
    candidates: int = 0
    ssrcs: set[int] = field(default_factory=set)
    track_ids: set[str] = field(default_factory=set)  # the last word of each msid

    @property
    def where(self) -> str:
        return f"media section {self.index + 1} ({self.kind})"


_MEDIA_LINE = re.compile(f"m=([a-z]+) ({_NUMBER}) ({_TOKEN})((?: {_TOKEN})+)")


def _check_section(index: int, block: list[str], video_codecs: Sequence[str]) -> _Section:
    match = _MEDIA_LINE.fullmatch(block[0])
    if match is None:
        _refuse(ErrorCode.BAD_SDP, f"media section {index + 1}: the m= line must be 'm=<kind> <port> <protocol> <formats>'")
    assert match is not None
    kind, port_text, protocol, formats = match.groups()
    if kind not in MEDIA_KINDS:
        _refuse(ErrorCode.UNSUPPORTED_MEDIA, f"media section {index + 1}: kind {_echo(kind)} is not one of {', '.join(MEDIA_KINDS)}")
    port = int(port_text)
    if port > C.MAX_PORT:
        _refuse(ErrorCode.BAD_SDP, f"media section {index + 1}: port {port} is over {C.MAX_PORT}")
    allowed = SCTP_PROTOCOLS if kind == "application" else RTP_PROTOCOLS
    if protocol not in allowed:
        _refuse(ErrorCode.UNSUPPORTED_PROTOCOL, f"media section {index + 1} ({kind}): protocol {_echo(protocol)} is not one of {', '.join(allowed)}")
    section = _Section(index, kind, port, protocol, formats.split())
    if kind == "application":
        _check_application(section, block[1:])
    else:
        _check_rtp(section, block[1:], video_codecs)
    if section.direction is None:
        section.direction = "sendrecv"  # a data channel section says none (RFC 4566's default)
    if section.direction not in SENDING_DIRECTIONS:
        # aiortc names its sender's track even in a recvonly section; nothing will come
        section.tracks = 0
    elif kind != "application":
        # aiortc makes a receiving track for every sending RTP section, msid or not: an
        # offer of six sections without a=msid lines would otherwise count no track at all
        section.tracks = max(1, section.tracks)
    return section


def _check_application(section: _Section, lines: list[str]) -> None:
    if section.protocol == LEGACY_SCTP_PROTOCOL:
        if not section.formats[0].isdigit() or len(section.formats[0]) > MAX_DIGITS or int(section.formats[0]) > C.MAX_PORT:
            _refuse(ErrorCode.BAD_SDP, f"{section.where}: DTLS/SCTP takes the SCTP port as its format")
    elif section.formats != [DATACHANNEL_FORMAT]:
        _refuse(ErrorCode.BAD_SDP, f"{section.where}: UDP/DTLS/SCTP takes the format {DATACHANNEL_FORMAT!r}")
    for line in lines:
        _check_media_line(section, line)


def _check_rtp(section: _Section, lines: list[str], video_codecs: Sequence[str]) -> None:
    payload_types: set[int] = set()
    for text in section.formats:
        if not text.isdigit() or len(text) > MAX_DIGITS:
            _refuse(ErrorCode.BAD_SDP, f"{section.where}: payload type {_echo(text)} is not a number")
        pt = int(text)
        if pt > MAX_PAYLOAD_TYPE or pt in FORBIDDEN_PAYLOAD_TYPES or pt in payload_types:
            _refuse(ErrorCode.BAD_SDP, f"{section.where}: payload type {pt} is out of range or repeated")
        payload_types.add(pt)
    codecs: dict[int, tuple[str, int]] = {}  # payload type -> (name lower-cased, clock rate)
    fmtp: list[tuple[int, str]] = []
    for line in lines:
        if line.startswith("a=rtpmap:"):
            _check_rtpmap(section, line[len("a=rtpmap:"):], payload_types, codecs)
        elif line.startswith("a=fmtp:"):
            match = _FMTP.fullmatch(line[len("a=fmtp:"):])
            if match is None:
                _refuse(ErrorCode.BAD_SDP, f"{section.where}: a=fmtp must be '<payload type> <parameters>'")
            assert match is not None
            fmtp.append((int(match.group(1)), match.group(2)))
        else:
            _check_media_line(section, line)
    # aiortc reads a=fmtp after every a=rtpmap of the section, and fails on one without its rtpmap
    for pt, parameters in fmtp:
        if pt not in codecs:
            _refuse(ErrorCode.BAD_SDP, f"{section.where}: a=fmtp for payload type {pt}, which has no a=rtpmap")
        _check_fmtp_parameters(section, parameters)
    if section.direction is None:
        # RFC 4566 makes sendrecv the default; aiortc fails (in createAnswer) without one
        _refuse(ErrorCode.BAD_SDP, f"{section.where}: no direction (a=sendrecv, sendonly, recvonly or inactive)")
    if not section.rtcp_mux:
        _refuse(ErrorCode.RTCP_MUX_REQUIRED, f"{section.where}: RTP and RTCP must share a port (a=rtcp-mux)")
    # every section, port 0 too: aiortc ignores the port, negotiates and receives anyway
    if section.kind == "audio":
        if SERVED_AUDIO_CODEC not in codecs.values():
            name, rate = SERVED_AUDIO_CODEC
            _refuse(ErrorCode.UNSUPPORTED_CODEC, f"{section.where}: the gateway decodes {name}/{rate} and the offer does not list it")
    elif not any(_serves(codecs.get(pt), parameters, video_codecs) for pt, parameters in _with_fmtp(codecs, fmtp)):
        _refuse(ErrorCode.UNSUPPORTED_CODEC, f"{section.where}: the gateway decodes {' or '.join(_describe(c) for c in video_codecs)} and the offer lists none of them")


def _describe(codec: str) -> str:
    return f"{codec}/{VIDEO_CLOCK_RATE}" if codec != "h264" else f"h264/{VIDEO_CLOCK_RATE} (baseline, packetization-mode=1)"


def _with_fmtp(codecs: dict[int, tuple[str, int]], fmtp: list[tuple[int, str]]) -> list[tuple[int, dict[str, str]]]:
    """Each payload type with its fmtp parameters (the last a=fmtp line wins, as in aiortc)."""
    parameters: dict[int, dict[str, str]] = {pt: {} for pt in codecs}
    for pt, text in fmtp:
        pairs = {}
        for item in text.split(";"):
            key, _, value = item.strip().partition("=")
            if key:
                pairs[key] = value
        parameters[pt] = pairs
    return list(parameters.items())


def _serves(codec: tuple[str, int] | None, parameters: dict[str, str], video_codecs: Sequence[str]) -> bool:
    if codec is None or codec[1] != VIDEO_CLOCK_RATE or codec[0] not in video_codecs:
        return False
    return codec[0] != "h264" or serves_h264(parameters)


def _check_rtpmap(section: _Section, value: str, payload_types: set[int], codecs: dict[int, tuple[str, int]]) -> None:
    match = _RTPMAP.fullmatch(value)
    if match is None:
        _refuse(ErrorCode.BAD_SDP, f"{section.where}: a=rtpmap must be '<payload type> <name>/<clock rate>[/<channels>]'")
    assert match is not None
    pt = int(match.group(1))
    if pt not in payload_types:
        _refuse(ErrorCode.BAD_SDP, f"{section.where}: a=rtpmap for payload type {pt}, which the m= line does not list")
    if pt in codecs:
        _refuse(ErrorCode.BAD_SDP, f"{section.where}: payload type {pt} has two a=rtpmap lines")
    codecs[pt] = (match.group(2).lower(), int(match.group(3)))


def _check_fmtp_parameters(section: _Section, parameters: str) -> None:
    for parameter in parameters.split(";"):
        if "=" in parameter:
            key, value = parameter.split("=", 1)
            if key in FMTP_INT_PARAMETERS and not (value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS):
                _refuse(ErrorCode.BAD_SDP, f"{section.where}: a=fmtp parameter {_echo(key)} must be a number")


def _check_media_line(section: _Section, line: str) -> None:
    """One line of an m-section other than the ones only RTP sections have."""
    if line[0] == "c":
        _check_connection(line, section.where)
        return
    if line[0] != "a":
        return  # b=, i=, k=: aiortc ignores them
    name, value = _attribute(line)
    _check_value(_COMMON_ATTRIBUTES, name, value, section.where)
    _check_value(_MEDIA_ATTRIBUTES, name, value, section.where)
    if name == "ice-ufrag":
        section.ufrag = True
    elif name == "ice-pwd":
        section.pwd = True
    elif name == "fingerprint":
        section.fingerprint = True
    elif name == "setup":
        section.setup = True
    elif name == "rtcp-mux":
        section.rtcp_mux = True
    elif name in DIRECTIONS:
        section.direction = name
    elif name == "mid":
        section.mid = value
    elif name == "candidate":
        section.candidates += 1
        if section.candidates > MAX_CANDIDATES_PER_SECTION:
            _refuse(ErrorCode.TOO_MANY_CANDIDATES, f"{section.where}: over {MAX_CANDIDATES_PER_SECTION} a=candidate lines")
    elif name == "msid":
        _note_track(section, value or "")
    elif name == "ssrc":
        _note_ssrc(section, value or "")


def _check_candidate(value: str | None) -> None:
    match = _CANDIDATE.fullmatch(value or "")
    if match is None:
        raise ValueError("malformed")
    component, _priority, port, extensions = match.groups()
    _number(component, C.MAX_PORT)
    _number(port, C.MAX_PORT)
    words = extensions.split()
    for key, word in zip(words[::2], words[1::2], strict=True):
        if key == "rport" and not (word.isdigit() and len(word) <= MAX_DIGITS and int(word) <= C.MAX_PORT):
            raise ValueError("rport is not a port")


def _check_extmap(value: str | None) -> None:
    match = _EXTMAP.fullmatch(value or "")
    if match is None:
        raise ValueError("malformed")
    _number(match.group(1), MAX_EXTMAP_ID)


def _check_port_attribute(pattern: re.Pattern[str]) -> Callable[[str | None], None]:
    def check(value: str | None) -> None:
        match = pattern.fullmatch(value or "")
        if match is None:
            raise ValueError("malformed")
        _number(match.group(1), C.MAX_PORT)

    return check


def _check_ssrc(value: str | None) -> None:
    match = _SSRC.fullmatch(value or "")
    if match is None:
        raise ValueError("malformed")
    _number(match.group(1), MAX_SSRC)


def _check_ssrc_group(value: str | None) -> None:
    if value is None or _SSRC_GROUP.fullmatch(value) is None:
        raise ValueError("malformed")
    for word in value.split()[1:]:
        _number(word, MAX_SSRC)


def _check_flag(value: str | None) -> None:
    if value is not None:
        raise ValueError("takes no value")


# attribute -> its check, for attributes aiortc reads only inside an m-section
_MEDIA_ATTRIBUTES: dict[str, Callable[[str | None], None]] = {
    "candidate": _check_candidate,
    "extmap": _check_extmap,
    "max-message-size": _need(re.compile(_NUMBER)),
    "rtcp": _check_port_attribute(_RTCP),
    "sctpmap": _check_port_attribute(_SCTPMAP),
    "sctp-port": _check_port_attribute(re.compile(f"({_NUMBER})")),
    "ssrc": _check_ssrc,
    "ssrc-group": _check_ssrc_group,
    "rtcp-fb": _need(_RTCP_FB),
    "msid": _need(_MSID),
    "mid": _need(_MID),
    "rtcp-mux": _check_flag,
    **{direction: _check_flag for direction in DIRECTIONS},
}


def _note_track(section: _Section, msid: str) -> None:
    """A track the section announces: ``<stream> <track>`` names it by its last word (the
    same track in two streams, or in a=msid and a=ssrc msid, counts once)."""
    words = msid.split()
    if words:
        section.track_ids.add(words[-1])
        section.tracks = len(section.track_ids)


def _note_ssrc(section: _Section, value: str) -> None:
    ssrc_text, description = value.split(" ", 1)  # the form was checked by _check_ssrc
    section.ssrcs.add(int(ssrc_text))
    if len(section.ssrcs) > MAX_SSRCS_PER_SECTION:
        _refuse(ErrorCode.TOO_MANY_SSRCS, f"{section.where}: over {MAX_SSRCS_PER_SECTION} SSRCs")
    attribute, _, rest = description.partition(":")
    if attribute == "msid":
        _note_track(section, rest)


# --- across sections --------------------------------------------------------------------------


def _check_transport(session: list[str], sections: list[_Section]) -> None:
    """ICE credentials, a DTLS fingerprint and a DTLS role for every section, from its own
    lines or the session's (aiortc copies the session's into each section)."""
    names = {_attribute(line)[0] for line in session if line.startswith("a=")}
    for section in sections:
        if not (section.ufrag or "ice-ufrag" in names) or not (section.pwd or "ice-pwd" in names):
            _refuse(ErrorCode.BAD_ICE_CREDENTIALS, f"{section.where}: no a=ice-ufrag and a=ice-pwd, in the section or the session")
        if not (section.fingerprint or "fingerprint" in names):
            _refuse(ErrorCode.BAD_FINGERPRINT, f"{section.where}: no a=fingerprint, in the section or the session")
        # RFC 5763 makes a=setup mandatory in an offer; aiortc fails (AttributeError in
        # setRemoteDescription, after the lease) on a section without one
        if not (section.setup or "setup" in names):
            _refuse(ErrorCode.BAD_DTLS_SETUP, f"{section.where}: no a=setup, in the section or the session")


def _check_bundle(session: list[str], sections: list[_Section]) -> None:
    mids: set[str] = set()
    for section in sections:
        if section.mid is not None:
            if section.mid in mids:
                _refuse(ErrorCode.BAD_SDP, f"{section.where}: a=mid {_echo(section.mid)} is used twice")
            mids.add(section.mid)
    for line in (line for line in session if line.startswith("a=")):
        name, value = _attribute(line)
        if name == "group" and value is not None:
            words = value.split()
            if words and words[0] == "BUNDLE":
                unknown = [mid for mid in words[1:] if mid not in mids]
                if unknown:
                    _refuse(ErrorCode.BAD_SDP, f"a=group:BUNDLE names {_echo(unknown[0])}, which no a=mid has")
