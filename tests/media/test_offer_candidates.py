"""runtime/media/offers.py strip_forbidden_candidates: an offer's own a=candidate lines go
through the same address filter as trickled ones (cloud metadata addresses included)."""

from __future__ import annotations

import pytest

from runtime.media.offers import strip_forbidden_candidates

OFFER_HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
GOOD = "a=candidate:1 1 udp 2122260223 192.168.1.20 5000 typ host\r\n"


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "100.100.100.200", "192.0.0.192", "168.63.129.16", "fd00:ec2::254", "::ffff:100.100.100.200"],
)
def test_metadata_candidates_in_the_sdp_are_stripped(address):
    bad = f"a=candidate:2 1 udp 2122260223 {address} 80 typ host\r\n"
    offer = OFFER_HEAD + GOOD + bad + "a=sendrecv\r\n"
    assert strip_forbidden_candidates(offer, allow_loopback=True) == OFFER_HEAD + GOOD + "a=sendrecv\r\n"


def test_ordinary_candidates_are_kept():
    offer = OFFER_HEAD + GOOD + "a=candidate:3 1 udp 2122260223 100.100.100.201 80 typ host\r\n"
    assert strip_forbidden_candidates(offer, allow_loopback=False) == offer
