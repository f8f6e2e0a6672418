"""runtime/front/http_server.py: uvicorn with a header timeout and a per-address connection
count (it has neither), on a real uvicorn server on 127.0.0.1 with real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import uvicorn

from runtime.front.http_server import uvicorn_options
from runtime.guard.http_limits import HttpLimitsConfig
from tests.conftest import async_wait_until, free_port
from tests.slow_client import trickle_headers

HEADER_TIMEOUT_S = 0.6
TRICKLE_S = 0.2  # one header line this often: never a complete request
CONNECTIONS = 12


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def server(**limits):
    port = free_port()
    options = uvicorn_options(HttpLimitsConfig(**limits), exempt_loopback=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **options)
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    assert await async_wait_until(lambda: srv.started, 10)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_trickling_connections_are_closed_after_the_header_timeout_and_the_server_answers_meanwhile():
    async with server(header_timeout_s=HEADER_TIMEOUT_S) as (url, port):
        stop = asyncio.Event()
        slow = [asyncio.create_task(trickle_headers("127.0.0.1", port, stop, every_s=TRICKLE_S, closed_by_s=10 * HEADER_TIMEOUT_S)) for _ in range(CONNECTIONS)]
        await asyncio.sleep(TRICKLE_S * 1.5)
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).text == "ok"  # a normal request meanwhile
        results = await asyncio.gather(*slow)
        stop.set()
        for answer, took in results:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer[:80]
            assert json.loads(body)["meta"]["error"] == "header_timeout"
            assert HEADER_TIMEOUT_S * 0.9 <= took < HEADER_TIMEOUT_S * 6


async def test_a_kept_alive_connection_trickling_its_next_request_is_closed_too():
    async with server(header_timeout_s=HEADER_TIMEOUT_S, keep_alive_timeout_s=30.0) as (_url, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = await reader.readuntil(b"\r\n0\r\n\r\n")  # the chunked body's end
        assert first.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\n")  # then nothing more: only the header timeout ends it
        rest = await asyncio.wait_for(reader.read(), 10 * HEADER_TIMEOUT_S)
        assert rest.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - start < HEADER_TIMEOUT_S * 6
        writer.close()


async def test_connections_per_address_are_bounded_and_given_back():
    async with server(max_connections_per_address=3) as (url, port):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(reader.read(), 5)
        assert refused.startswith(b"HTTP/1.1 429")
        assert b"too_many_connections" in refused
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).text == "ok"  # the count came back down


async def test_websocket_connections_count_while_open_and_are_given_back():
    import websockets

    async with server(max_connections_per_address=2) as (url, port):
        ws_url = f"ws://127.0.0.1:{port}/"
        for _ in range(4):  # more than the limit, one after another: each gives its place back
            async with websockets.connect(ws_url) as ws:
                await ws.send("hi")
        first = await websockets.connect(ws_url)
        second = await websockets.connect(ws_url)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 429")  # two open: full
        writer.close()
        await first.close()
        await second.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).text == "ok"
