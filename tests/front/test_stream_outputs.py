"""A function's result mapped onto its stream's outputs, through the whole stack.

The stream is ``fn(frame, count, text, level) -> (frame, count, text, level)`` with outputs
``[webrtc, count, text, seen_level]``, where ``count`` and ``text`` are also inputs (like the
guide's ``gr.State`` and transcript): the media comes back as video, the other values reach
the gateway as the stream's own outputs (not as AdditionalOutputs), and the inputs that are
also outputs accumulate inside the worker, with no round trip through a page.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from runtime.clients.webrtc import Client, synthetic_image
from tests.conftest import async_wait_until
from workers.link.wire import OutputsKind
from workers.process.loader import StreamOutputs

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIZE = (160, 120)
FPS = 15
MARK_ROWS = 8  # the client paints its frame counter along the top rows
START_TIMEOUT_S = 60.0
WANT_OUTPUTS = 20  # outputs read before, and again after, the inputs are pushed
# outputs: [webrtc, count, text, seen_level]; inputs after the WebRTC: [count, text, level]
LAYOUT = StreamOutputs(count=4, media=0, feedback={1: 0, 2: 1})


def count_and_invert(frame: np.ndarray, count: int, text: str, level: int):
    return 255 - frame, count + 1, text + "x", level


async def read_outputs(served, client: Client, want: int) -> list[list]:
    """The session's stream outputs, oldest first, as the page's event would fetch them."""
    got: list[list] = []

    async def take() -> None:
        while True:
            values = served.gateway.next_output(client.webrtc_id, client.session_key, OutputsKind.STREAM)
            if values is None:
                return
            got.append(values)

    while len(got) < want:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(take(), served.loop))
        await asyncio.sleep(0.05)
    return got


async def test_outputs_map_in_order_and_inputs_that_are_outputs_feed_back(make_gateway):
    with make_gateway(
        lambda gw: gw.add_stream(
            count_and_invert, event_id="stream-outputs", initial_args=[0, "", 7], outputs=LAYOUT
        )
    ) as served:
        client = Client(served.url, fps=FPS, size=SIZE)
        await client.connect()
        assert await async_wait_until(lambda: client.first_frame.is_set(), START_TIMEOUT_S), (
            client.messages
        )
        before = await asyncio.wait_for(read_outputs(served, client, WANT_OUTPUTS), 30)
        # what a page sends when any input changes: every input's value, here stale ones for
        # the two fed back (the worker is long past 0 and "") and a new level
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{served.url}/webrtc/input",
                json=client.ids(args=[0, "", 9]),
            )
            assert r.status_code == 200
        after = await asyncio.wait_for(read_outputs(served, client, WANT_OUTPUTS), 30)
        frame = client.frames[-1].astype(int)
        additional = served.gateway.next_output(client.webrtc_id, client.session_key)
        errors = [m for m in client.messages if m.get("type") == "error"]
        await client.close()
    assert not errors, errors
    outputs = before + after
    # one value per non-WebRTC output, in their order
    assert all(len(v) == 3 for v in outputs), outputs[:3]
    counts = [v[0] for v in outputs]
    # fed back in the worker: every call saw the previous call's count, from the first call
    # on, none lost or reordered on the way, and the stale push did not roll it back
    assert counts == list(range(1, len(counts) + 1)), counts
    assert all(v[1] == "x" * v[0] for v in outputs), "the text did not accumulate with the count"
    # an input that is not an output took the pushed value
    levels = [v[2] for v in outputs]
    assert levels[0] == 7 and levels[-1] == 9, levels
    assert levels == sorted(levels), levels
    # the stream's own outputs are not AdditionalOutputs
    assert additional is None
    # the media position came back as video: the picture, inverted
    picture = synthetic_image(*SIZE).astype(int)
    assert np.abs(frame[MARK_ROWS:] - (255 - picture[MARK_ROWS:])).mean() < 20


def wrong_arity(frame: np.ndarray, count: int):
    return frame, count + 1, "one too many"


async def test_a_result_that_does_not_fit_the_outputs_is_reported(make_gateway):
    layout = StreamOutputs(count=2, media=0, feedback={1: 0})
    with make_gateway(
        lambda gw: gw.add_stream(
            wrong_arity, event_id="stream-outputs-arity", initial_args=[0], outputs=layout
        )
    ) as served:
        client = Client(served.url, fps=FPS, size=SIZE)
        await client.connect()
        err = await client.wait_message("error", START_TIMEOUT_S)
        await client.close()
    assert "2 outputs" in err["message"] and "3 values" in err["message"], err
