"""Where a session's media is: one interface, two implementations.

A per-session request (a trickled candidate, input values, the outputs, a hang-up) goes to
the engine that holds the session, wherever the request came in. :class:`EngineHandle` is
that engine as the front sees it:

* :class:`LocalEngine` -- the :class:`MediaEngine` of this process (``gateway.processes: 1``),
  called directly on the serving event loop; it also owns the inbox through which other
  gateways of a cluster reach its sessions (runtime/media/inbox.py);
* :class:`RemoteEngine` -- a Ray actor answering :class:`runtime.media.media_process.EngineCalls`:
  one of this front's media processes, or a media process (or inbox) of another gateway.
  Its answers come back as plain values (a :class:`runtime.errors.Refused` among them), and
  a dead or silent actor becomes the Refused the routes answer with.

The front finds the handle (:meth:`runtime.front.gateway.Gateway.engine_for`) and makes one
call on it; nothing else asks which kind it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

from runtime import constants as C
from runtime.errors import ErrorCode, Refused
from runtime.media.engine import MediaEngine
from workers.link.wire import OutputsKind

FORWARD_TIMEOUT_S = C.RAY_CALL_TIMEOUT_S  # a forwarded per-session call not answered by then fails
OFFER_FORWARD_TIMEOUT_S = C.LEASE_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S + C.WORKER_CONNECT_TIMEOUT_S + C.RAY_CALL_TIMEOUT_S
SSE_KEEPALIVE_S = 15.0  # comment line on an idle outputs stream, so proxies keep it open

# A session's outputs for one SSE reader: a list of values each, None for a keep-alive.
Outputs = AsyncIterator[list[Any] | None]


class EngineHandle(Protocol):
    """The per-session calls of the engine that holds a session. Each takes the session's
    ``key`` (the answer's session_key), checked by that engine; each raises Refused as
    the routes answer it (404 unknown, 403 wrong key, ...)."""

    async def offer(
        self, event_id: str, webrtc_id: str, sdp: str, client: str | None, queue: bool, ticket: str | None
    ) -> dict[str, Any]: ...

    async def resume(self, event_id: str, webrtc_id: str, sdp: str, key: Any, client: str | None) -> dict[str, Any]: ...

    async def candidate(self, webrtc_id: str, key: Any, cand: Any) -> None: ...

    async def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None: ...

    async def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | None: ...

    async def close_session(self, webrtc_id: str, key: Any) -> None: ...

    async def outputs(self, webrtc_id: str, key: Any) -> Outputs:
        """Subscribe now (refusals raise here), read through the iterator returned."""
        ...


class LocalEngine:
    """This process's engine, called in place (its sessions live on this event loop)."""

    def __init__(self, engine: MediaEngine) -> None:
        self.engine = engine
        # on a cluster: the inbox other gateways reach this process's sessions by
        self.inbox: Any = None
        self._inbox_task: asyncio.Task[None] | None = None
        self._inbox_stop: asyncio.Event | None = None

    async def offer(
        self, event_id: str, webrtc_id: str, sdp: str, client: str | None, queue: bool, ticket: str | None
    ) -> dict[str, Any]:
        self.serve_inbox()
        return await self.engine.offer(event_id, webrtc_id, sdp, client, queue, ticket)

    async def resume(self, event_id: str, webrtc_id: str, sdp: str, key: Any, client: str | None) -> dict[str, Any]:
        self.serve_inbox()
        return await self.engine.resume(event_id, webrtc_id, sdp, key, client)

    async def candidate(self, webrtc_id: str, key: Any, cand: Any) -> None:
        await self.engine.add_candidate(webrtc_id, key, cand)

    async def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        self.engine.set_args(webrtc_id, key, args)

    async def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | None:
        return self.engine.next_output(webrtc_id, key, kind)

    async def close_session(self, webrtc_id: str, key: Any) -> None:
        await self.engine.close_session(webrtc_id, key)

    async def outputs(self, webrtc_id: str, key: Any) -> Outputs:
        engine = self.engine
        session, queue = engine.subscribe(webrtc_id, key)

        async def read() -> Outputs:
            try:
                while not session.closed or not queue.empty():
                    try:
                        yield await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                    except TimeoutError:
                        yield None
            finally:
                engine.unsubscribe(session, queue)

        return read()

    # --- the inbox: other gateways' requests for this process's sessions -------------------------

    def start_inbox(self, scheduler: Any, gateway_id: str, node_id: str) -> None:
        """Other gateways of a cluster forward this process's sessions' requests through an
        inbox actor (runtime/media/inbox.py); under the embedded local Ray there are none.
        Blocking."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from runtime.media.inbox import InboxActor

        self.inbox = InboxActor.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),
        ).remote()
        ray.get(
            scheduler.register_media.remote(gateway_id, self.inbox, gateway_id, node_id, os.getpid(), True),
            timeout=C.RAY_CALL_TIMEOUT_S,
        )

    def serve_inbox(self) -> None:
        """Answer the inbox on this (the serving) loop: the sessions live here. Started at
        the first offer, since start() may run before the app's loop exists."""
        if self.inbox is None or self._inbox_task is not None:
            return
        from runtime.media.inbox import serve_inbox
        from runtime.media.media_process import EngineCalls

        self._inbox_stop = asyncio.Event()
        self._inbox_task = asyncio.get_running_loop().create_task(
            serve_inbox(self.inbox, EngineCalls(self.engine), self._inbox_stop)
        )

    def close_inbox(self) -> None:
        import ray

        if self._inbox_stop is not None:
            self._inbox_stop.set()
        if self._inbox_task is not None:
            self._inbox_task.cancel()
            self._inbox_task = None
        inbox, self.inbox = self.inbox, None
        if inbox is not None:
            with contextlib.suppress(Exception):
                ray.kill(inbox, no_restart=True)


async def forward(ref: Any, timeout: float = FORWARD_TIMEOUT_S) -> Any:
    """A forwarded call's answer; a dead or silent actor as the Refused the route answers."""
    from ray.exceptions import ActorDiedError

    try:
        return await asyncio.wait_for(ref, timeout)
    except ActorDiedError as exc:
        raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, "the session's media process has ended") from exc
    except TimeoutError as exc:
        raise Refused(ErrorCode.MEDIA_TIMEOUT, f"the session's media process did not answer within {timeout:.0f} s") from exc


def raise_refusal(result: Any) -> None:
    if isinstance(result, Refused):
        raise result


class RemoteEngine:
    """An engine in another process: a media process's actor, or another gateway's inbox."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def offer(
        self, event_id: str, webrtc_id: str, sdp: str, client: str | None, queue: bool, ticket: str | None
    ) -> dict[str, Any]:
        answer = await forward(self.actor.offer.remote(event_id, webrtc_id, sdp, client, queue, ticket), OFFER_FORWARD_TIMEOUT_S)
        raise_refusal(answer)
        return answer

    async def resume(self, event_id: str, webrtc_id: str, sdp: str, key: Any, client: str | None) -> dict[str, Any]:
        answer = await forward(self.actor.resume.remote(event_id, webrtc_id, sdp, key, client), OFFER_FORWARD_TIMEOUT_S)
        raise_refusal(answer)
        return answer

    async def candidate(self, webrtc_id: str, key: Any, cand: Any) -> None:
        raise_refusal(await forward(self.actor.candidate.remote(webrtc_id, key, cand)))

    async def set_args(self, webrtc_id: str, key: Any, args: list[Any]) -> None:
        raise_refusal(await forward(self.actor.set_args.remote(webrtc_id, key, args)))

    async def next_output(self, webrtc_id: str, key: Any, kind: OutputsKind = OutputsKind.ADDITIONAL) -> list[Any] | None:
        result = await forward(self.actor.next_output.remote(webrtc_id, key, kind))
        raise_refusal(result)
        return result

    async def close_session(self, webrtc_id: str, key: Any) -> None:
        timeout = MediaEngine.HANGUP_WAIT_S + FORWARD_TIMEOUT_S
        raise_refusal(await forward(self.actor.close_session.remote(webrtc_id, key), timeout))

    async def outputs(self, webrtc_id: str, key: Any) -> Outputs:
        sub = await forward(self.actor.subscribe.remote(webrtc_id, key))
        raise_refusal(sub)
        actor = self.actor

        async def read() -> Outputs:
            try:
                while True:
                    got, ended = await forward(actor.wait_outputs.remote(sub, SSE_KEEPALIVE_S), SSE_KEEPALIVE_S + FORWARD_TIMEOUT_S)
                    for values in got:
                        yield values
                    if ended:
                        return
                    if not got:
                        yield None
            except Refused:
                return  # its media process ended: so did the session
            finally:
                with contextlib.suppress(Exception):
                    actor.unsubscribe.remote(sub)

        return read()
