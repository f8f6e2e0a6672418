"""The WebRTC component without a browser or Ray: what .stream() registers and wires up.

Each test gets a fresh process-wide gateway (never started), so stream ids and pools of
different tests never mix and nothing here starts Ray.
"""

from __future__ import annotations

import base64
import re
import textwrap
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from fastapi.testclient import TestClient

import gradio_ext
from gradio_ext import WebRTC, serving
from gradio_ext.events import args_pusher
from gradio_ext.webrtc import (
    ARGS_EVENT,
    CSS_PATH,
    HTML_PATH,
    JS_PATH,
    MAX_ICON_BYTES,
)
from runtime.errors import ErrorCode, Refused
from workers.process import loader


def detection(image: np.ndarray, conf_threshold: float = 0.3) -> np.ndarray:
    return image


def other(image: np.ndarray) -> np.ndarray:
    return image


@pytest.fixture(autouse=True)
def fresh_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_gateway", None)


def dependencies(demo: gr.Blocks) -> list[dict]:
    return demo.config["dependencies"]


def component_config(demo: gr.Blocks, block: gr.components.Component) -> dict:
    return next(c for c in demo.config["components"] if c["id"] == block._id)


def test_public_api_is_all():
    assert sorted(gradio_ext.__all__) == [
        "AdditionalOutputs",
        "AlgoOptions",
        "AsyncAudioVideoStreamHandler",
        "AsyncStreamHandler",
        "AudioVideoStreamHandler",
        "CloseStream",
        "Context",
        "EspeakTTSOptions",
        "PauseDetectionModel",
        "ReplyOnPause",
        "ReplyOnStopWords",
        "SileroVADModel",
        "SileroVadOptions",
        "StopWordOptions",
        "StreamHandler",
        "VideoStreamHandler",
        "WebRTC",
        "aggregate_bytes_to_16bit",
        "async_aggregate_bytes_to_16bit",
        "audio_to_bytes",
        "audio_to_file",
        "audio_to_float32",
        "audio_to_int16",
        "get_current_context",
        "get_hf_turn_credentials",
        "get_stt_model",
        "get_tts_model",
        "get_turn_credentials",
        "get_twilio_turn_credentials",
        "stt_for_chunks",
    ]
    for name in gradio_ext.__all__:
        assert getattr(gradio_ext, name) is not None
    # an app without Gradio imports the same handler API from runtime.stream
    import runtime.stream

    assert set(runtime.stream.__all__) == set(gradio_ext.__all__) - {"WebRTC"} | {"Stream", "bind_lifespan"}
    for name in runtime.stream.__all__:
        assert getattr(runtime.stream, name) is getattr(gradio_ext, name, getattr(runtime.stream, name))


def test_stream_registers_event_with_modes_limits_and_initial_args():
    with gr.Blocks() as demo:
        image = WebRTC(label="Stream", mode="send-receive", modality="video")
        conf = gr.Slider(minimum=0, maximum=1, step=0.05, value=0.3)
        name = gr.Textbox(value="hi")
        event = image.stream(
            fn=detection,
            inputs=[image, conf, name],
            outputs=[image],
            time_limit=10,
            concurrency_limit=3,
        )
    gateway = serving.get_gateway()
    assert gateway.events[event.event_id] is event
    assert event.handler is detection
    assert (event.mode, event.modality) == ("send-receive", "video")
    assert (event.concurrency_limit, event.time_limit) == (3, 10)
    assert event.initial_args == [0.3, "hi"]  # inputs[0], the WebRTC component, is not an arg
    assert not gateway._started, "building a Blocks must not start Ray"

    rtc = component_config(demo, image)["props"]["props"]["rtc"]
    assert rtc["stream_id"] == event.event_id
    assert (rtc["mode"], rtc["modality"], rtc["time_limit"]) == ("send-receive", "video", 10)

    # the args event and every extra input's change carry [webrtc_id, *inputs], off the queue
    wired = {tuple(map(tuple, d["targets"])): d for d in dependencies(demo)}
    expected_inputs = [image._id, conf._id, name._id]
    for target in [(image._id, ARGS_EVENT), (conf._id, "change"), (name._id, "change")]:
        dep = wired[(target,)]
        assert dep["inputs"] == expected_inputs
        assert dep["outputs"] == []
        assert dep["queue"] is False
        assert dep["show_progress"] == "hidden"


def test_concurrency_limit_default_means_one_and_none_means_unlimited():
    with gr.Blocks():
        a = WebRTC()
        b = WebRTC()
        first = a.stream(detection, inputs=[a], outputs=[a])
        second = b.stream(other, inputs=[b], outputs=[b], concurrency_limit=None)
    assert first.concurrency_limit == 1
    assert second.concurrency_limit is None
    assert first.event_id != second.event_id


def test_component_time_limit_applies_when_stream_sets_none():
    with gr.Blocks():
        a = WebRTC(time_limit=42)
        event = a.stream(detection, inputs=[a], outputs=[a])
    assert event.time_limit == 42


def test_seed_webrtc_stream_alias():
    with gr.Blocks():
        image = WebRTC(label="Strean")
        gr.Slider(minimum=0.0, maximum=1.0, step=0.05, value=0.30)
        event = image.webrtc_stream(fn=detection, inputs=[image], stream_every=0.05, time_limit=30)
    assert event.handler is detection
    assert event.time_limit == 30
    assert event.initial_args == []


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "sendrecv"}, {"mode": "upload"}, {"modality": "image"}, {"modality": "Audio"}],
)
def test_invalid_mode_or_modality_raise(kwargs):
    with pytest.raises(ValueError, match="mode|modality"):
        WebRTC(**kwargs)


def test_other_outputs_of_a_stream_handler_are_refused():
    # a function's other outputs are mapped like a Gradio event's (tests/gradio_ext/
    # test_stream_wiring.py); a StreamHandler's emit() gives media only
    from workers.handlers import StreamHandler

    class Echo(StreamHandler):
        def receive(self, frame):
            pass

        def emit(self):
            return None

        def copy(self):
            return Echo()

    with gr.Blocks():
        audio = WebRTC(modality="audio")
        text = gr.Textbox()
        with pytest.raises(ValueError, match="AdditionalOutputs"):
            audio.stream(Echo(), inputs=[audio], outputs=[audio, text])
    assert not serving.get_gateway().events


def test_seed_parameters_are_accepted():
    WebRTC(
        None, 480, "100%", "Stream", None, None, True, True, 1, 200, True, True, "cam", ["a"], True, "k",
        mirror_webcam=False, show_share_button=False, show_download_button=False, min_length=1,
        max_length=5, streaming=True, mode="receive", modality="audio-video",
        rtc_configuration={"iceServers": [{"urls": "stun:stun.example.org:3478"}]},
        time_limit=30, track_constraints={"width": {"ideal": 320}}, icon="x.png",
        icon_button_color="rgb(35, 157, 225)", pulse_color="red", button_labels={"start": "Go"},
    )  # fmt: skip


def test_client_config_carries_the_rtc_configuration_mirroring_and_sizes():
    servers = [{"urls": "turn:turn.example.org", "username": "u", "credential": "c"}]
    whole = {"iceServers": servers, "iceTransportPolicy": "relay", "bundlePolicy": "max-bundle"}
    mirrored = WebRTC(rtc_configuration=whole, height=360, width="50%")
    plain = WebRTC(mirror_webcam=False)
    # the whole dict reaches the browser's RTCPeerConnection, not only its iceServers
    assert mirrored.props["rtc"]["rtc_configuration"] == whole
    assert mirrored.props["rtc"]["rtc_configuration_per_connection"] is False
    assert plain.props["rtc"]["rtc_configuration"] == {"iceServers": []}
    assert mirrored.props["rtc"]["mirror_webcam"] is True
    assert plain.props["rtc"]["mirror_webcam"] is False
    # sizes reach the page as CSS lengths (it sets them as CSS variables)
    assert (mirrored.props["rtc"]["height"], mirrored.props["rtc"]["width"]) == ("360px", "50%")
    assert (plain.props["rtc"]["height"], plain.props["rtc"]["width"]) == (None, None)


def test_markup_and_styles_are_the_static_files_and_safe_as_templates():
    label = "${alert(1)} {{x}} `y` <b>"
    w = WebRTC(button_labels={"start": label}, pulse_color="red")
    assert w.html_template == HTML_PATH.read_text()
    assert w.css_template == CSS_PATH.read_text()
    # gr.HTML renders both through Handlebars and then as a JS template literal
    for text in (w.html_template, w.css_template):
        for token in ("${", "{{", "`", "\\"):
            assert token not in text, token
    # options reach the page as data (set with textContent), never as markup
    assert w.props["rtc"]["button_labels"]["start"] == label
    assert "<b>" not in w.html_template
    # the standalone page inlines the script in a <script> element
    assert "</script" not in JS_PATH.read_text().lower()


def test_every_element_the_script_looks_up_is_in_the_markup():
    js, markup = JS_PATH.read_text(), HTML_PATH.read_text()
    used = set(re.findall(r'querySelector\("\.(rtc-[a-z-]+)"\)', js))
    assert len(used) > 10, used
    classes = {c for attr in re.findall(r'class="([^"]+)"', markup) for c in attr.split()}
    assert used - classes == set()


def test_look_options_reach_the_page():
    w = WebRTC(
        modality="audio",
        pulse_color="rgb(35, 157, 225)",
        icon_button_color="#123456",
        icon="https://example.org/icon.png",
        show_download_button=True,
        interactive=False,
        button_labels={"start": "Talk"},
    )
    rtc = w.props["rtc"]
    assert rtc["pulse_color"] == "rgb(35, 157, 225)"
    assert rtc["icon_button_color"] == "#123456"
    assert rtc["icon"] == "https://example.org/icon.png"
    assert rtc["show_download_button"] is True
    assert rtc["interactive"] is False
    assert rtc["button_labels"] == {"start": "Talk", "stop": "Stop", "waiting": "Connecting…"}
    default = WebRTC().props["rtc"]
    assert default["show_download_button"] is False and default["interactive"] is True
    assert default["icon"] is None and default["pulse_color"] is None


def test_local_icon_file_is_inlined_as_a_data_url(tmp_path):
    png = tmp_path / "icon.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    src = WebRTC(modality="audio", icon=png).props["rtc"]["icon"]
    assert src == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    # a path that is no file here is left for the page to load relative to the app
    assert WebRTC(icon="static/icon.png").props["rtc"]["icon"] == "static/icon.png"


def test_bad_local_icons_are_refused(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_ICON_BYTES + 1))
    with pytest.raises(ValueError, match="at most"):
        WebRTC(icon=str(big))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        WebRTC(icon=str(text))


@pytest.mark.parametrize("value", ["clip.mp4", Path("clip.mp4"), ("clip.mp4", "subs.srt")])
def test_value_is_accepted_and_dropped(value):
    # the component's value is the session id the page sets; a default video has no place
    assert WebRTC(value=value).value is None


def test_js_names_the_args_event_and_data_channel():
    js = JS_PATH.read_text()
    assert f'"{ARGS_EVENT}"' in js
    assert 'createDataChannel("text")' in js
    assert js.index('createDataChannel("text")') < js.index("createOffer()")


def test_routes_are_mounted_at_the_app_root_without_starting_ray():
    with gr.Blocks() as demo:
        image = WebRTC()
        image.stream(detection, inputs=[image], outputs=[image], time_limit=5)
    paths = [getattr(r, "path", None) for r in demo.app.router.routes]
    assert paths[0].startswith("/webrtc/")
    assert "/webrtc/offer" in paths
    streams = TestClient(demo.app, base_url="http://127.0.0.1").get("/webrtc/streams").json()["streams"]
    assert [s["time_limit"] for s in streams] == [5]
    assert not serving.get_gateway()._started


def test_blocks_without_streams_get_no_routes():
    with gr.Blocks() as demo:
        gr.Textbox()
    assert "/webrtc/offer" not in [getattr(r, "path", None) for r in demo.app.router.routes]


class RecordingGateway:
    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.calls: list[tuple[str, list]] = []

    async def aset_args(self, webrtc_id: str, key, args: list) -> None:
        if webrtc_id not in self.known:
            raise Refused(ErrorCode.UNKNOWN_WEBRTC_ID, "no session")
        if key != "k3y":
            raise Refused(ErrorCode.BAD_SESSION_KEY, "wrong key")
        self.calls.append((webrtc_id, args))


async def test_args_reach_the_gateway_and_unknown_ids_are_ignored():
    gw = RecordingGateway({"abc"})
    push = args_pusher(gw)
    # the component's value is the session's handle: "webrtc_id/key"
    await push("abc/k3y", 0.5, "x")
    await push("gone/k3y", 0.5, "x")  # a session that ended: swallowed
    await push("abc/forged", 0.5, "x")  # a wrong key: refused, swallowed (logged)
    await push("abc", 0.5, "x")  # no key at all: refused
    await push("", 0.5, "x")  # not streaming yet: nothing to do
    await push(None)
    assert gw.calls == [("abc", [0.5, "x"])]


APP = """
    import gradio as gr
    import threading
    from gradio_ext import WebRTC

    lock = threading.Lock()  # does not pickle, like the seeds' models

    def first(frame):
        with lock:
            return frame

    def second(frame, k):
        return frame * k

    with gr.Blocks() as demo:
        a = WebRTC()
        b = WebRTC()
        k = gr.Number(value=2)
        a.stream(first, inputs=[a], outputs=[a])
        b.stream(second, inputs=[b, k], outputs=[b])

    # unguarded, as in the seeds: must do nothing in a worker
    result = demo.launch()
    with open(__file__ + ".launched", "w") as f:
        f.write(repr((result, demo.is_running)))
"""


@pytest.fixture
def clean_registry():
    loader.REGISTRY.clear()
    yield loader.REGISTRY
    loader.REGISTRY.clear()


def test_worker_import_registers_handlers_and_launches_nothing(tmp_path, clean_registry):
    """The real recovery path: workers.process.loader re-runs the app file as a worker would."""
    app = tmp_path / "seed_app.py"
    app.write_text(textwrap.dedent(APP))
    handler = loader.load(loader.HandlerSpec(app_path=str(app), event_index=1, name="second"))
    assert handler.__name__ == "second"
    assert [h.__name__ for h in clean_registry] == ["first", "second"]
    assert (tmp_path / "seed_app.py.launched").read_text() == "(None, False)"
    assert serving._gateway is None, "a worker import created a gateway"
    assert not loader.in_worker_import(), "the worker-import flag outlived the import"


def test_worker_import_mode_stream_only_registers(clean_registry, monkeypatch):
    monkeypatch.setenv(loader.WORKER_IMPORT_ENV, "1")
    with gr.Blocks() as demo:
        image = WebRTC()
        assert image.stream(detection, inputs=[image], outputs=[image]) is None
    assert clean_registry == [detection]
    assert serving._gateway is None
    assert demo.launch() is None
    assert [d for d in dependencies(demo) if d["targets"][0][1] == ARGS_EVENT] == []


def test_stream_outside_blocks_registers_nothing():
    image = WebRTC()
    with pytest.raises(AttributeError, match="outside of a gradio.Blocks context"):
        image.stream(detection, inputs=[image], outputs=[image])
    assert serving.get_gateway().events == {}
