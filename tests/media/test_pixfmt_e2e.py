"""I420 end to end: a real aiortc client, a real gateway, handlers in real Ray workers. The
gateway does no colour conversion either way (its RGB fallbacks are counted and stay at 0),
and the pictures come back with their colours where they belong, at even and odd sizes."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import runtime.media.webrtc_session as session_module
from runtime.clients.webrtc import Client
from tests.conftest import async_wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

VP8_MEAN_ERROR = 12  # mean absolute error a VP8 round trip at the start bitrate stays under
COUNTER_STRIP_ROWS = 40  # the client paints its counter in the rows above
ODD_SIZE = (321, 241)  # (W, H) the client sends
ODD_OUT = (199, 257)  # (H, W) the handler returns


def swap_red_blue(frame: np.ndarray) -> np.ndarray:
    """RGB -> BGR: a U/V or R/B mix-up anywhere on the path shows."""
    if frame.shape != (480, 640, 3) or frame.dtype != np.uint8:
        raise ValueError(f"handler got {frame.shape} {frame.dtype}")
    return frame[:, :, ::-1]


def crop_swap_float(frame: np.ndarray) -> np.ndarray:
    """Takes the odd-sized input, returns another odd size as float in [0, 1]."""
    if frame.shape != (ODD_SIZE[1], ODD_SIZE[0], 3) or frame.dtype != np.uint8:
        raise ValueError(f"handler got {frame.shape} {frame.dtype}")
    return frame[: ODD_OUT[0], : ODD_OUT[1], ::-1].astype(np.float32) / 255.0


@pytest.fixture
def gateway_conversions(monkeypatch) -> dict[str, int]:
    """Counts the gateway's RGB fallbacks (the gateway runs in this process)."""
    counts = {"rgb_of": 0, "video_frame_of": 0}
    for name in counts:
        real = getattr(session_module, name)

        def counting(*args: Any, _real: Any = real, _name: str = name) -> Any:
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(session_module, name, counting)
    return counts


def mean_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(int) - want.astype(int)).mean())


@pytest.mark.parametrize("transport", ["auto", "tcp"])
async def test_colours_come_back_swapped_without_gateway_conversion(make_gateway, gateway_conversions, transport):
    event_id = f"e2e-pixfmt-{transport}"
    with make_gateway(lambda gw: gw.add_stream(swap_red_blue, event_id=event_id), transport=transport) as served:
        client = Client(served.url)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), 30)
        sent = client.source.base
        region = (slice(60, 460), slice(20, 620))
        want = sent[region][:, :, ::-1]

        def error() -> float:
            return mean_error(client.frames[-1][region], want)

        await async_wait_until(lambda: client.report.received > 10 and error() < VP8_MEAN_ERROR, 15)
        err, unswapped = error(), mean_error(client.frames[-1][region], sent[region])
        per_channel = [mean_error(client.frames[-1][region][:, :, c], want[:, :, c]) for c in range(3)]
        report = await client.close()
    assert report.received > 10
    assert err < VP8_MEAN_ERROR, f"not the swapped picture (mean error {err:.1f}, per channel {per_channel})"
    assert unswapped > 4 * VP8_MEAN_ERROR, "the picture came back unswapped"
    assert max(per_channel) < 1.5 * VP8_MEAN_ERROR, f"one channel is off: {per_channel}"
    assert not [m for m in client.messages if m.get("type") == "error"]
    assert gateway_conversions == {"rgb_of": 0, "video_frame_of": 0}, "the gateway converted colours"


async def test_odd_sizes_in_and_out(make_gateway, gateway_conversions):
    with make_gateway(lambda gw: gw.add_stream(crop_swap_float, event_id="e2e-pixfmt-odd")) as served:
        client = Client(served.url, size=ODD_SIZE, codec="vp8")  # VP8 codes odd sizes; H.264 evens them (test_gateway_e2e)
        await client.connect()
        await asyncio.wait_for(client.first_frame.wait(), 30)
        sent = client.source.base
        assert sent.shape == (ODD_SIZE[1], ODD_SIZE[0], 3)
        region = (slice(COUNTER_STRIP_ROWS, ODD_OUT[0]), slice(0, ODD_OUT[1]))
        want = sent[region][:, :, ::-1]

        def good() -> bool:
            frame = client.frames[-1]
            return frame.shape == (ODD_OUT[0], ODD_OUT[1], 3) and mean_error(frame[region], want) < VP8_MEAN_ERROR

        await async_wait_until(lambda: client.report.received > 10 and good(), 15)
        frame = client.frames[-1]
        await client.close()
    assert frame.shape == (ODD_OUT[0], ODD_OUT[1], 3), "the handler's odd size did not come through"
    err = mean_error(frame[region], want)
    assert err < VP8_MEAN_ERROR, f"odd-sized picture is off (mean error {err:.1f})"
    # the last column and row are chroma blocks of their own at odd sizes: they come back too
    edge = mean_error(frame[COUNTER_STRIP_ROWS:, -2:], want[:, -2:])
    assert edge < 2 * VP8_MEAN_ERROR, f"the odd edge is off (mean error {edge:.1f})"
    assert not [m for m in client.messages if m.get("type") == "error"], client.messages
    assert gateway_conversions == {"rgb_of": 0, "video_frame_of": 0}, "the gateway converted colours"
