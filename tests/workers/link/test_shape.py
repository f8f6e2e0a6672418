"""workers/link/shape.py: the one place a stream's mode and modality are asked what they mean."""

from __future__ import annotations

import itertools

import pytest

from workers.link.shape import Modality, Mode, StreamShape, Transport


@pytest.mark.parametrize(("mode", "modality"), list(itertools.product(Mode, Modality)))
def test_every_shape_answers_as_gradio_webrtc_defines_the_pair(mode: Mode, modality: Modality) -> None:
    shape = StreamShape.parse(mode.value, modality.value)
    video = modality.value in ("video", "audio-video")
    audio = modality.value in ("audio", "audio-video")
    assert (shape.has_video, shape.has_audio) == (video, audio)
    assert shape.client_sends == (mode.value in ("send-receive", "send"))
    assert shape.server_sends == (mode.value in ("send-receive", "receive"))
    assert shape.takes_video == (mode.value != "receive" and video)
    assert shape.takes_audio == (mode.value != "receive" and audio)
    assert shape.sends_video == (mode.value != "send" and video)
    assert shape.sends_audio == (mode.value != "send" and audio)


def test_the_enums_are_the_api_strings() -> None:
    # an app passes mode="receive"; the wire carries the same text: both compare equal
    assert Mode("receive") == "receive" and Modality.AUDIO_VIDEO == "audio-video"
    assert [t.value for t in Transport] == ["webrtc", "websocket", "telephone"]
    assert StreamShape() == StreamShape(Mode.SEND_RECEIVE, Modality.VIDEO)


@pytest.mark.parametrize(("mode", "modality", "named"), [("both", "video", "mode"), ("send", "Video", "modality"), ("", "", "mode")])
def test_an_unknown_value_is_refused_naming_the_accepted_ones(mode: str, modality: str, named: str) -> None:
    with pytest.raises(ValueError, match=rf"^{named} must be one of \[") as err:
        StreamShape.parse(mode, modality)
    assert repr(mode if named == "mode" else modality) in str(err.value)
