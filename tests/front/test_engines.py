"""The engine handles (runtime/front/engines.py) without Ray: a RemoteEngine answers as the
LocalEngine would -- a refusal from the other process is the same HTTPError, a silent one a 504."""

import asyncio

import pytest

from runtime.errors import HTTPError
from runtime.front import engines
from runtime.front.engines import RemoteEngine


class _Method:
    def __init__(self, answer):
        self.answer = answer

    def remote(self, *args):
        async def call():
            if self.answer == "hang":
                await asyncio.sleep(3600)
            return self.answer

        return call()


class _Actor:
    def __init__(self, **answers):
        for name, answer in answers.items():
            setattr(self, name, _Method(answer))


async def test_a_refusal_from_the_other_process_is_the_same_http_error():
    refusal = HTTPError(403, "bad_session_key", "wrong key").refusal()
    handle = RemoteEngine(_Actor(set_args=refusal, next_output=refusal))
    with pytest.raises(HTTPError) as err:
        await handle.set_args("s", "k", [1])
    assert (err.value.status, err.value.error) == (403, "bad_session_key")
    with pytest.raises(HTTPError):
        await handle.next_output("s", "k")


async def test_answers_pass_through():
    handle = RemoteEngine(_Actor(next_output=[1, 2], candidate=None, offer={"status": "queued"}))
    assert await handle.next_output("s", "k") == [1, 2]
    await handle.candidate("s", "k", {"candidate": ""})
    assert await handle.offer("e", "s", "sdp", None, True, None) == {"status": "queued"}


async def test_a_silent_process_is_a_504():
    handle = RemoteEngine(_Actor(set_args="hang"))
    with pytest.raises(HTTPError) as err:
        await engines.forward(handle.actor.set_args.remote("s", "k", []), 0.05)
    assert (err.value.status, err.value.error) == (504, "media_timeout")
