"""The inbox: how another gateway reaches a session held inside an app's own process.

With ``gateway.processes: 1`` the app's process holds its sessions itself, and Ray cannot
call into it (a driver is not an actor). On a cluster (any ``ray.address``, where other
gateways may share the deployment) the front starts a small async actor, its inbox, and
registers it in the session directory as if it were a media process: it answers the same
per-session calls (:class:`runtime.media.media_process.EngineCalls`) by handing each to the app's
process, which takes them with a long poll (:meth:`Inbox.take`) on its own event loop, where
its sessions live, and gives back the result (:meth:`Inbox.answer`).

The inbox is owned by the app's process, so Ray ends it when that process ends; the
scheduler, which waits on its ``run()`` as on any media process, then gives the process's
leases back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import ray

from runtime import constants as C
from workers.link.wire import OutputsKind

log = logging.getLogger("rtcpool.inbox")

INBOX_CONCURRENCY = 1000  # calls an inbox holds at once (each waits for the app's answer)
TAKE_WAIT_S = 5.0  # a long poll of the app's process returns empty after this long
TAKE_BATCH_MAX = 64  # calls handed over per poll
RELAY_TIMEOUT_S = C.RAY_CALL_TIMEOUT_S  # a call the app's process does not answer by then fails


class Inbox:
    def __init__(self) -> None:
        self._calls: asyncio.Queue[tuple[int, str, tuple[Any, ...]]] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._forever: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Never returns while the inbox lives (the scheduler's death watch)."""
        if self._forever is None:
            self._forever = asyncio.get_running_loop().create_future()
        await self._forever

    # --- the app's side ------------------------------------------------------------------------

    async def take(self) -> list[tuple[int, str, tuple[Any, ...]]]:
        """The calls waiting (up to TAKE_BATCH_MAX), after up to TAKE_WAIT_S for the first."""
        batch = []
        with contextlib.suppress(asyncio.TimeoutError):
            batch.append(await asyncio.wait_for(self._calls.get(), TAKE_WAIT_S))
        while batch and not self._calls.empty() and len(batch) < TAKE_BATCH_MAX:
            batch.append(self._calls.get_nowait())
        return batch

    async def answer(self, call_id: int, value: Any) -> None:
        fut = self._waiting.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    # --- the forwarding gateways' side: EngineCalls, relayed -------------------------------------

    async def _relay(self, op: str, *args: Any, timeout: float = RELAY_TIMEOUT_S) -> Any:
        call_id = next(self._ids)
        fut = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        self._calls.put_nowait((call_id, op, args))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(call_id, None)

    async def candidate(self, webrtc_id: str, key: Any, cand: Any) -> Any:
        return await self._relay("candidate", webrtc_id, key, cand)

    async def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> Any:
        return await self._relay("set_args", webrtc_id, key, args)

    async def close_session(self, webrtc_id: str, key: Any) -> Any:
        from runtime.media.engine import MediaEngine

        return await self._relay("close_session", webrtc_id, key, timeout=MediaEngine.HANGUP_WAIT_S)

    async def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> Any:
        return await self._relay("next_output", webrtc_id, key, kind)

    async def subscribe(self, webrtc_id: str, key: Any) -> Any:
        return await self._relay("subscribe", webrtc_id, key)

    async def wait_outputs(self, sub: int, timeout: float) -> Any:
        return await self._relay("wait_outputs", sub, timeout, timeout=timeout + RELAY_TIMEOUT_S)

    async def unsubscribe(self, sub: int) -> Any:
        return await self._relay("unsubscribe", sub)


InboxActor = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=INBOX_CONCURRENCY)(Inbox)  # type: ignore[call-overload]  # Ray's stubs lack max_concurrency

# the calls an inbox relays, and nothing else: the app's process runs only these
RELAYED = frozenset({"candidate", "set_args", "close_session", "next_output", "subscribe", "wait_outputs", "unsubscribe"})


async def serve_inbox(inbox: Any, calls: Any, stop: asyncio.Event) -> None:
    """The app's side: take the inbox's calls and answer each from ``calls`` (an
    EngineCalls over this process's engine), on this loop, until ``stop``."""
    from ray.exceptions import ActorDiedError

    async def one(call_id: int, op: str, args: tuple[Any, ...]) -> None:
        try:
            result = getattr(calls, op)(*args) if op in RELAYED else None
            if asyncio.iscoroutine(result):
                result = await result
        except Exception as exc:  # a bug here must not leave the caller waiting
            log.warning("inbox call %s failed: %s", op, exc)
            result = None
        with contextlib.suppress(Exception):
            await inbox.answer.remote(call_id, result)

    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        try:
            batch = await asyncio.wait_for(inbox.take.remote(), TAKE_WAIT_S + C.RAY_CALL_TIMEOUT_S)
        except ActorDiedError:
            return
        except Exception as exc:
            log.warning("inbox poll failed: %s", exc)
            await asyncio.sleep(C.MEDIA_POLL_S)
            continue
        for call_id, op, args in batch:
            task = asyncio.get_running_loop().create_task(one(call_id, op, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
