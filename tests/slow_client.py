"""A slow-loris client: a request's headers sent one line at a time, never the blank line."""

from __future__ import annotations

import asyncio
import contextlib
import time


async def trickle_headers(
    host: str, port: int, stop: asyncio.Event, *, every_s: float, closed_by_s: float, path: str = "/"
) -> tuple[bytes, float]:
    """Send one header line every ``every_s`` until ``stop`` or the server closes; what the
    server answered and how long after the connection it closed (``closed_by_s`` at most)."""
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode())

    async def lines() -> None:
        n = 0
        with contextlib.suppress(ConnectionError):
            while not stop.is_set():
                await asyncio.sleep(every_s)
                n += 1
                writer.write(f"X-Slow-{n}: 1\r\n".encode())
                await writer.drain()

    sender = asyncio.create_task(lines())
    try:
        answer = await asyncio.wait_for(reader.read(), closed_by_s)  # until the server closes
        return answer, time.monotonic() - start
    finally:
        sender.cancel()
        writer.close()
