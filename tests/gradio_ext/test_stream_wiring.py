"""What ``.stream()`` registers for ``stream_every`` and for outputs other than the WebRTC
component, without a browser or Ray (each test gets a fresh, never started gateway)."""

from __future__ import annotations

import asyncio

import gradio as gr
import numpy as np
import pytest

from gradio_ext import VideoStreamHandler, WebRTC, serving
from gradio_ext.events import stream_outputs_fetcher
from gradio_ext.webrtc import ARGS_EVENT, OUTPUTS_EVENT
from workers.link.wire import OutputsKind
from workers.process.loader import StreamOutputs, app_file_of, load, make_spec


def detection(image: np.ndarray, conf: float = 0.3) -> np.ndarray:
    return image


def transcribe_handler(current_audio, state, transcript):
    state.append(current_audio)
    return state[-3:], transcript + " word"


@pytest.fixture(autouse=True)
def fresh_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_gateway", None)


def listeners(demo: gr.Blocks) -> dict[tuple[int, str], list[dict]]:
    """(component id, event name) -> the dependencies it triggers."""
    out: dict[tuple[int, str], list[dict]] = {}
    for dep in demo.config["dependencies"]:
        for target in dep["targets"]:
            out.setdefault(tuple(target), []).append(dep)
    return out


def test_the_guides_state_snippet_maps_its_outputs_and_feeds_them_back():
    with gr.Blocks() as demo:
        mic = WebRTC(mode="send", modality="audio")
        state = gr.State(value=[])
        transcript = gr.Textbox(label="Transcript")
        event = mic.stream(
            transcribe_handler,
            [mic, state, transcript],
            [state, transcript],
            time_limit=10,
            stream_every=1,
        )
    assert event.stream_every == 1.0
    # both outputs are inputs too: output i is input i (after the WebRTC component)
    assert event.outputs == StreamOutputs(count=2, media=None, feedback={0: 0, 1: 1})
    assert event.initial_args == [[], ""], "an empty Textbox starts as the page sends it"
    wired = listeners(demo)
    (fetch,) = wired[(mic._id, OUTPUTS_EVENT)]
    assert fetch["inputs"] == [mic._id]
    assert fetch["outputs"] == [state._id, transcript._id]
    assert fetch["queue"] is False
    # the inputs still reach the worker on connect and on request...
    (push,) = wired[(mic._id, ARGS_EVENT)]
    assert push["inputs"] == [mic._id, state._id, transcript._id]
    # ...but an input that is also an output does not push on change: that change is the
    # stream's own output arriving, which the worker already has
    assert (state._id, "change") not in wired and (transcript._id, "change") not in wired


def test_media_and_other_outputs_in_any_order():
    with gr.Blocks() as demo:
        image = WebRTC()
        conf = gr.Slider(value=0.3)
        label = gr.Textbox()
        event = image.stream(detection, [image, conf], [label, image])
    assert event.outputs == StreamOutputs(count=2, media=1, feedback={})
    wired = listeners(demo)
    (fetch,) = wired[(image._id, OUTPUTS_EVENT)]
    assert fetch["outputs"] == [label._id]
    assert (conf._id, "change") in wired, "an input that is no output still pushes its changes"


def test_the_webrtc_component_alone_keeps_the_seeds_shape():
    with gr.Blocks() as demo:
        image = WebRTC()
        event = image.stream(detection, [image], [image])
    assert not event.outputs.mapped
    assert (image._id, OUTPUTS_EVENT) not in listeners(demo)


def test_the_event_options_reach_the_workers_spec():
    with gr.Blocks():
        image = WebRTC()
        text = gr.Textbox()
        event = image.stream(detection, [image, text], [image, text], stream_every=0.25)
    spec = make_spec(
        event.handler, event.index, stream_every=event.stream_every, outputs=event.outputs
    )
    assert spec.stream_every == 0.25
    assert spec.outputs == StreamOutputs(count=2, media=0, feedback={1: 0})


def test_a_video_stream_handler_registers_as_its_function_would():
    """fastrtc's VideoStreamHandler(fn, fps=...) where a frame function goes: its inputs and
    outputs are the function's, and the worker gets the wrapper (it applies the fps)."""
    handler = VideoStreamHandler(detection, fps=5)
    with gr.Blocks() as demo:
        image = WebRTC()
        conf = gr.Slider(value=0.3)
        label = gr.Textbox()
        event = image.stream(handler, [image, conf], [image, label])
    assert event.handler is handler
    assert event.initial_args == [0.3]
    assert event.outputs == StreamOutputs(count=2, media=0, feedback={})
    assert (conf._id, "change") in listeners(demo)
    spec = make_spec(event.handler, event.index, stream_every=event.stream_every, outputs=event.outputs)
    assert spec.blob is not None, "it travels by value, as detection alone would"
    assert spec.app_path == app_file_of(detection)
    loaded = load(spec)
    assert isinstance(loaded, VideoStreamHandler) and loaded.fps == 5.0
    assert loaded.callable(np.zeros((2, 2, 3), np.uint8)).shape == (2, 2, 3)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "0.5"])
def test_bad_stream_every_is_refused_before_anything_is_wired(bad):
    with gr.Blocks() as demo:
        image = WebRTC()
        with pytest.raises(ValueError, match="stream_every"):
            image.stream(detection, [image], [image], stream_every=bad)
    assert not serving.get_gateway().events
    assert not demo.config["dependencies"]


def test_another_webrtc_component_or_a_non_component_output_is_refused():
    with gr.Blocks():
        a, b = WebRTC(), WebRTC()
        with pytest.raises(ValueError, match="WebRTC"):
            a.stream(detection, [a], [a, b])
        with pytest.raises(TypeError, match="Gradio components"):
            a.stream(detection, [a], [a, "text"])
    assert not serving.get_gateway().events


class FakeGateway:
    def __init__(self, queued: list[list]) -> None:
        self.queued = queued
        self.kinds: list[str] = []

    async def anext_output(self, webrtc_id: str, key, kind: str = "additional"):
        self.kinds.append(kind)
        return self.queued.pop(0) if self.queued else None


def test_the_fetcher_takes_one_stream_output_per_fetch_and_skips_when_none():
    gw = FakeGateway([[["s"], "text"], [["t"], "more"]])
    fetch = stream_outputs_fetcher(gw, 2)
    assert asyncio.run(fetch("id")) == (["s"], "text")
    assert asyncio.run(fetch("id")) == (["t"], "more")
    assert isinstance(asyncio.run(fetch("id")), type(gr.skip()))
    assert gw.kinds == [OutputsKind.STREAM] * 3
    one = stream_outputs_fetcher(FakeGateway([["only"]]), 1)
    assert asyncio.run(one("id")) == "only"
    assert isinstance(asyncio.run(one("")), type(gr.skip())), "no session id: nothing to fetch"
