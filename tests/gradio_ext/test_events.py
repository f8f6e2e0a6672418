"""The WebRTC component's events without a browser or Ray: the per-connection
``rtc_configuration``, ``on_additional_outputs``, the ordered output fetches, and the Gradio
event keywords of ``.stream()`` (each test gets a fresh, never started gateway).

In Chromium: tests/e2e/test_component_events.py.
"""

from __future__ import annotations

import asyncio
import threading

import gradio as gr
import numpy as np
import pytest

from gradio_ext import WebRTC, serving
from gradio_ext.events import additional_outputs_fetcher
from gradio_ext.webrtc import (
    ARGS_EVENT,
    OUTPUTS_DONE_JS,
    OUTPUTS_EVENT,
    STREAM_EVENT_KEYWORDS,
)
from runtime.config_loader import load_config
from runtime.front.gateway import Gateway


def identity(frame: np.ndarray) -> np.ndarray:
    return frame


@pytest.fixture(autouse=True)
def fresh_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_gateway", None)


def deps(demo: gr.Blocks) -> list[dict]:
    return demo.config["dependencies"]


# --- rtc_configuration ------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.threads: list[int] = []


def test_a_callable_is_evaluated_per_connection_by_the_server_function():
    seen = Counter()

    def turn_credentials():
        seen.calls += 1
        seen.threads.append(threading.get_ident())
        return {"iceServers": [{"urls": "turn:t.example.org", "username": f"u{seen.calls}"}], "iceTransportPolicy": "relay"}

    w = WebRTC(rtc_configuration=turn_credentials)
    assert seen.calls == 0, "the constructor must not call it: credentials are per connection"
    rtc = w.props["rtc"]
    assert rtc["rtc_configuration_per_connection"] is True
    assert rtc["rtc_configuration"] is None  # nothing stale in the page

    async def two_connections():
        return [await w.webrtc_configuration([]), await w.webrtc_configuration([])], threading.get_ident()

    (first, second), loop_thread = asyncio.run(two_connections())
    assert seen.calls == 2
    assert first["iceServers"][0]["username"] == "u1" and second["iceServers"][0]["username"] == "u2"
    assert first["iceTransportPolicy"] == "relay"  # the whole dict, as returned
    # a sync callable may block on a credentials service: never on the event loop
    assert loop_thread not in seen.threads


def test_an_async_callable_is_awaited_once_per_connection():
    seen = Counter()

    async def turn_credentials():
        seen.calls += 1
        await asyncio.sleep(0)
        return {"iceServers": [], "bundlePolicy": "max-bundle", "n": seen.calls}

    w = WebRTC(rtc_configuration=turn_credentials)
    got = asyncio.run(w.webrtc_configuration([]))
    assert got == {"iceServers": [], "bundlePolicy": "max-bundle", "n": 1}
    assert seen.calls == 1


def test_the_server_function_is_listed_for_the_page():
    with gr.Blocks() as demo:
        w = WebRTC(rtc_configuration=lambda: {"iceServers": []})
    config = next(c for c in demo.config["components"] if c["id"] == w._id)
    assert "webrtc_configuration" in config["props"]["server_fns"]


@pytest.mark.parametrize("bad", ["stun:stun.example.org", ["stun:x"], 3])
def test_a_configuration_that_is_no_dict_or_callable_is_refused(bad):
    with pytest.raises(TypeError, match="rtc_configuration must be a dict"):
        WebRTC(rtc_configuration=bad)


def test_a_callable_returning_no_dict_fails_that_connection_clearly():
    w = WebRTC(rtc_configuration=lambda: ["not", "a", "dict"])
    with pytest.raises(TypeError, match=r"rtc_configuration\(\) must return a dict"):
        asyncio.run(w.webrtc_configuration([]))


def test_no_configuration_means_the_deployments_ice_servers(monkeypatch):
    stun = {"urls": "stun:stun.example.org:3478"}
    monkeypatch.setattr(
        serving, "_gateway", Gateway(load_config(overrides={"gateway": {"ice_servers": [stun]}}))
    )
    with gr.Blocks():
        w = WebRTC()
        w.stream(identity, inputs=[w], outputs=[w])
    listed = {"iceServers": [{"urls": [stun["urls"]]}]}  # the config lists urls
    assert w.props["rtc"]["rtc_configuration"] == listed
    assert asyncio.run(w.webrtc_configuration([])) == listed


# --- on_additional_outputs ----------------------------------------------------------------------


class OutputsGateway:
    def __init__(self, queued: list[list]) -> None:
        self.queued = queued

    async def anext_output(self, webrtc_id: str, key, kind: str = "additional"):
        return self.queued.pop(0) if self.queued else None


def test_additional_outputs_fn_gets_the_inputs_first_then_the_outputs_on_a_thread():
    calls: list[tuple] = []
    threads: list[int] = []

    def fn(history, text, message, extra):
        calls.append((history, text, message, extra))
        threads.append(threading.get_ident())
        return [*history, message]

    fetch = additional_outputs_fetcher(OutputsGateway([["hello", 1]]), fn)

    async def run():
        return await fetch("id", ["earlier"], "box"), threading.get_ident()

    result, loop_thread = asyncio.run(run())
    # gradio_webrtc and fastrtc: fn(*inputs, *AdditionalOutputs.args)
    assert calls == [(["earlier"], "box", "hello", 1)]
    assert result == ["earlier", "hello"]
    assert loop_thread not in threads, "a sync fn ran on the server's event loop"


def test_additional_outputs_async_fn_and_nothing_queued():
    async def fn(history, message):
        return [*history, message]

    fetch = additional_outputs_fetcher(OutputsGateway([["m"]]), fn)
    assert asyncio.run(fetch("id", [])) == ["m"]
    assert isinstance(asyncio.run(fetch("id", [])), type(gr.skip())), "nothing queued: no update"
    assert isinstance(asyncio.run(fetch("", [])), type(gr.skip())), "not streaming: no update"


def test_output_fetches_are_complete_and_each_reports_back_to_the_page():
    with gr.Blocks() as demo:
        w = WebRTC()
        text = gr.Textbox()
        chat = gr.Chatbot()
        w.stream(lambda f: (f, "x"), inputs=[w], outputs=[w, text])
        w.on_additional_outputs(lambda h, m: h, inputs=[chat], outputs=[chat], queue=False)
    by_id = {d["id"]: d for d in deps(demo)}
    fetches = [d for d in deps(demo) if d["targets"] == [(w._id, OUTPUTS_EVENT)]]
    assert len(fetches) == 2
    # "multiple": a fetch is never dropped because an earlier one is still running
    assert all(d["trigger_mode"] == "multiple" for d in fetches)
    # each is followed by a browser-only step that tells the page it is done
    thens = [d for d in by_id.values() if d.get("trigger_after") in {f["id"] for f in fetches}]
    assert len(thens) == 2
    for then in thens:
        assert then["js"] == OUTPUTS_DONE_JS
        assert then["inputs"] == [w._id] and then["outputs"] == [] and then["backend_fn"] is False
    # the page waits for that many reports per fetch
    assert w.props["rtc"]["output_listeners"] == 2


# --- .stream() keywords -----------------------------------------------------------------------


def test_unknown_stream_keywords_are_refused_by_name_and_nothing_is_registered():
    with gr.Blocks() as demo:
        w = WebRTC()
        with pytest.raises(TypeError, match="stream_evry"):
            w.stream(identity, inputs=[w], outputs=[w], stream_evry=0.5)
    assert not serving.get_gateway().events
    assert not deps(demo)


def test_gradio_event_keywords_are_accepted():
    options = {
        "queue": False,
        "trigger_mode": "always_last",
        "batch": False,
        "max_batch_size": 4,
        "preprocess": True,
        "postprocess": True,
        "cancels": None,
        "every": None,
        "scroll_to_output": False,
        "show_progress_on": None,
        "api_description": "d",
        "api_visibility": "private",
        "show_api": False,
        "key": "k",
        "validator": None,
    }
    assert set(options) - {"queue"} == STREAM_EVENT_KEYWORDS  # queue has an effect: the waiting room
    with gr.Blocks():
        w = WebRTC()
        event = w.stream(identity, inputs=[w], outputs=[w], **options)
    assert event.event_id == "stream-0"
    assert event.queue is False


def test_queue_and_max_queue_reach_the_stream_event():
    with gr.Blocks():
        a, b = WebRTC(), WebRTC()
        default = a.stream(identity, inputs=[a], outputs=[a])
        bounded = b.stream(identity, inputs=[b], outputs=[b], max_queue=3)
    assert (default.queue, default.max_queue) == (True, None), "queued by default, as in Gradio"
    assert (bounded.queue, bounded.max_queue) == (True, 3)
    with gr.Blocks():
        c = WebRTC()
        with pytest.raises(ValueError, match="max_queue"):
            c.stream(identity, inputs=[c], outputs=[c], max_queue=-1)


def test_api_name_or_concurrency_id_names_the_stream():
    with gr.Blocks():
        a, b, c = WebRTC(), WebRTC(), WebRTC()
        named = a.stream(identity, inputs=[a], outputs=[a], api_name="faces", concurrency_id="gpu")
        by_concurrency = b.stream(identity, inputs=[b], outputs=[b], concurrency_id="gpu")
        unnamed = c.stream(identity, inputs=[c], outputs=[c], api_name=False)
    assert named.event_id == "faces"  # api_name wins
    assert by_concurrency.event_id == "gpu"
    assert unnamed.event_id == "stream-2"
    assert list(serving.get_gateway().events) == ["faces", "gpu", "stream-2"]
    assert a.props["rtc"]["stream_id"] == "faces"


def test_a_config_override_reaches_a_named_stream(monkeypatch):
    config = load_config(overrides={"streams": {"faces": {"concurrency_limit": 7, "time_limit": 12}}})
    monkeypatch.setattr(serving, "_gateway", Gateway(config))
    with gr.Blocks():
        w = WebRTC()
        event = w.stream(identity, inputs=[w], outputs=[w], api_name="faces")
    assert (event.concurrency_limit, event.time_limit) == (7, 12)


def test_a_stream_name_used_twice_is_refused_before_anything_is_wired():
    with gr.Blocks() as demo:
        a, b = WebRTC(), WebRTC()
        a.stream(identity, inputs=[a], outputs=[a], api_name="faces")
        wired = len(deps(demo))
        with pytest.raises(ValueError, match="'faces'.*already registered"):
            b.stream(identity, inputs=[b], outputs=[b], api_name="faces")
        assert len(deps(demo)) == wired
    assert list(serving.get_gateway().events) == ["faces"]


@pytest.mark.parametrize("bad", ["", "  ", 3, True])
def test_a_stream_name_must_be_a_string(bad):
    with gr.Blocks():
        w = WebRTC()
        with pytest.raises(TypeError, match="api_name must be a non-empty string"):
            w.stream(identity, inputs=[w], outputs=[w], api_name=bad)
    assert not serving.get_gateway().events


def test_js_runs_on_the_inputs_before_they_reach_the_worker():
    js = "(id, k) => [id, k * 2]"
    with gr.Blocks() as demo:
        w = WebRTC()
        k = gr.Number(value=1)
        w.stream(lambda f, n: f, inputs=[w, k], outputs=[w], js=js)
    pushes = [d for d in deps(demo) if d["targets"] in ([(w._id, ARGS_EVENT)], [(k._id, "change")])]
    assert len(pushes) == 2 and all(d["js"] == js for d in pushes)


def test_webrtc_stream_keeps_gradio_webrtc_0_0_1s_parameter_order():
    with gr.Blocks():
        w = WebRTC()
        event = w.webrtc_stream(identity, [w], None, 3, None, 0.05, 30)
    assert (event.concurrency_limit, event.stream_every, event.time_limit) == (3, 0.05, 30)


def test_no_label_means_no_badge():
    assert WebRTC().show_label is False
    assert WebRTC(label="Stream").show_label is True
    assert WebRTC(label="Stream", show_label=False).show_label is False


def test_a_copy_gradio_makes_for_an_update_keeps_the_stream():
    # gr.update(visible=...) makes Gradio re-create the component from its constructor
    # arguments and re-render it with the copy's props: the copy must still show the stream
    with gr.Blocks():
        w = WebRTC(label="Stream", rtc_configuration=lambda: {"iceServers": []})
        text = gr.Textbox()
        w.stream(lambda f: (f, "x"), inputs=[w], outputs=[w, text], api_name="kept", time_limit=9)
    kwargs = {**w.constructor_args, "visible": False, "render": False}
    copy = WebRTC(**kwargs)
    assert copy.props["rtc"] == {**w.props["rtc"]}
    assert (copy.props["rtc"]["stream_id"], copy.props["rtc"]["time_limit"]) == ("kept", 9)
    assert copy.props["rtc"]["output_listeners"] == 1
    assert copy.stream_event is None and list(serving.get_gateway().events) == ["kept"]


def test_an_update_sends_the_page_the_components_props_not_only_the_update():
    # Gradio sends a gr.HTML's update with props made of the update's keys that are no
    # gr.HTML parameter (its "__type__" marker at least): the page would replace the
    # component's props with those and re-render it without a stream. gradio_ext's hook
    # puts them on top of the (updated copy's) own props.
    import gradio.blocks

    with gr.Blocks():
        w = WebRTC(label="Stream")
        w.stream(identity, inputs=[w], outputs=[w], api_name="kept")
    copy = WebRTC(**{**w.constructor_args, "visible": True, "render": False})
    update = gradio.blocks.postprocess_update_dict(
        block=copy, update_dict={"visible": True, "__type__": "update"}
    )
    assert update["visible"] is True
    assert update["props"] == {"rtc": w.props["rtc"]}
    # other gr.HTML components are left as Gradio has them
    plain = gr.HTML("x", render=False)
    update = gradio.blocks.postprocess_update_dict(
        block=plain, update_dict={"visible": True, "__type__": "update"}
    )
    assert update["props"] == {"__type__": "update"}
