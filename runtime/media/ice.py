"""Which local addresses aiortc offers as ICE host candidates.

aioice gathers a host candidate on every interface except 127.0.0.1. A deployment wants to
pin the public interface; tests and benchmarks must stay on loopback. aioice has no option
for this, so its address lookup is replaced, process-wide, by the configured list.
"""

from __future__ import annotations

import aioice.ice

_original = aioice.ice.get_host_addresses


def pin_host_addresses(addresses: list[str] | None) -> None:
    """Offer exactly ``addresses`` (IPv4 or IPv6); None or [] restores aioice's own lookup."""
    if not addresses:
        aioice.ice.get_host_addresses = _original
        return
    pinned = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
