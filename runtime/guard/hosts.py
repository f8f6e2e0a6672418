"""The Host allow-list: which names a request may address this server by (DNS rebinding).

A DNS-rebinding page is served from the attacker's name, then points that name at
127.0.0.1 (or a private address): the browser then sends the page's requests to this server
with ``Host: attacker.example`` and ``Origin: http://attacker.example``, the same authority,
so the Origin rule alone lets them through. The Host header is what gives it away: this
server is never legitimately addressed by a name it does not know.

Allowed, always:

* an IP literal (``127.0.0.1:7860``, ``[::1]``, ``10.0.0.5``): a rebinding page never has
  one, as it needs a name to rebind (this keeps Kubernetes probes and scrapers, which
  address pods by IP, working);
* ``localhost`` and any ``*.localhost`` (RFC 6761: browsers resolve them to loopback
  themselves, no DNS answer can rebind them);
* the names in ``gateway.allowed_hosts``: ``example.com`` exactly, ``.example.com`` or
  ``*.example.com`` for it and its subdomains, ``*`` for any name (the check off);
* the names the config gives anyway: ``gateway.host`` when it is a name, and the host of
  ``telephone.public_url``.

Ports are not compared (a proxy may change them). A request with another Host is refused
421 ``host_not_allowed`` (RFC 9110: this server does not answer for that authority).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from runtime.errors import ErrorCode, Refused

ANY_HOST = "*"  # in gateway.allowed_hosts: every name (the DNS-rebinding check off)
LOCALHOST = "localhost"
LOCALHOST_SUFFIX = ".localhost"  # RFC 6761: resolved to loopback by the browser itself
MAX_HOST_CHARS = 255  # RFC 1035: a DNS name is at most 253 characters (plus port and brackets)
SHOWN_HOST_CHARS = 100  # a refused Host is quoted in the reason up to this length
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # a bind address that names no host


def normalize_host_pattern(item: str) -> str:
    """A ``gateway.allowed_hosts`` entry in lower case, without a trailing dot: ``name``,
    ``.name`` (it and its subdomains; ``*.name`` is read as that) or ``*``; ValueError if it
    is not one (a scheme, path or port means it was written as a URL)."""
    text = item.strip().lower()
    if text == ANY_HOST:
        return text
    text = text.rstrip(".")
    if text.startswith("*."):
        text = text[1:]
    name = text[1:] if text.startswith(".") else text
    if not name or any(c in name for c in "/:@?#[] \t*") or len(name) > MAX_HOST_CHARS:
        raise ValueError(f"{item!r} is not a host name: write example.com, .example.com, *.example.com or '*' (no scheme, port or path)")
    return text


def host_name(host_header: str) -> str | None:
    """The name (or IP) of a Host header, lower case, without port or trailing dot; None if
    it does not parse."""
    if len(host_header) > MAX_HOST_CHARS:
        return None
    try:
        name = urlsplit("//" + host_header.strip()).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


class HostAllowList:
    """:meth:`check` a request's Host header against the allowed names."""

    def __init__(self, patterns: Iterable[str]) -> None:
        normalized = {normalize_host_pattern(p) for p in patterns}
        self.any = ANY_HOST in normalized
        self._exact = frozenset(p for p in normalized if not p.startswith("."))
        self._suffixes = tuple(sorted(p for p in normalized if p.startswith(".")))

    def allows(self, name: str) -> bool:
        if self.any or _is_ip(name) or name == LOCALHOST or name.endswith(LOCALHOST_SUFFIX):
            return True
        if name in self._exact:
            return True
        return any(name.endswith(s) or name == s[1:] for s in self._suffixes)

    def check(self, host_header: str | None) -> None:
        """Refuse (421 ``host_not_allowed``) a request whose Host names this server by a name
        it does not know. No Host at all (HTTP/1.0, a test transport): allowed, as no browser
        sends a request without one."""
        if host_header is None or self.any:
            return
        name = host_name(host_header)
        if name is not None and self.allows(name):
            return
        shown = host_header[:SHOWN_HOST_CHARS]
        raise Refused(ErrorCode.HOST_NOT_ALLOWED, f"this server does not answer for host {shown!r} (list it in gateway.allowed_hosts)")


def default_hosts(bind_host: str, public_url: str | None) -> list[str]:
    """The names the config gives anyway: the bind address when it is a name, the host of
    the public URL (what Twilio and users address the server by)."""
    names = []
    if bind_host.strip().lower() not in WILDCARD_HOSTS and not _is_ip(bind_host.strip("[]")):
        names.append(bind_host)
    if public_url:
        with_name = host_name(urlsplit(public_url).netloc)
        if with_name:
            names.append(with_name)
    return names
