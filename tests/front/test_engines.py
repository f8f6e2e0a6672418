"""The engine handles (runtime/front/engines.py) without Ray: a RemoteEngine answers as the
LocalEngine would -- a refusal from the other process is the same Refused, a silent one a 504."""

import asyncio
import pickle

import pytest

from runtime.errors import ErrorCode, Refused
from runtime.front import engines
from runtime.front.engines import RemoteEngine
from runtime.front.statuses import http_status


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
    # what a media process returns crossed Ray pickled
    refusal = pickle.loads(pickle.dumps(Refused(ErrorCode.BAD_SESSION_KEY, "wrong key")))
    handle = RemoteEngine(_Actor(set_args=refusal, next_output=refusal))
    with pytest.raises(Refused) as err:
        await handle.set_args("s", "k", [1])
    assert (http_status(err.value), err.value.error) == (403, "bad_session_key")
    with pytest.raises(Refused):
        await handle.next_output("s", "k")


async def test_answers_pass_through():
    handle = RemoteEngine(_Actor(next_output=[1, 2], candidate=None, offer={"status": "queued"}))
    assert await handle.next_output("s", "k") == [1, 2]
    await handle.candidate("s", "k", {"candidate": ""})
    assert await handle.offer("e", "s", "sdp", None, True, None) == {"status": "queued"}


async def test_a_silent_process_is_a_504():
    handle = RemoteEngine(_Actor(set_args="hang"))
    with pytest.raises(Refused) as err:
        await engines.forward(handle.actor.set_args.remote("s", "k", []), 0.05)
    assert (http_status(err.value), err.value.error) == (504, "media_timeout")
