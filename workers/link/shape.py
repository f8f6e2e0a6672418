"""What a stream carries and which way: its mode, its modality, and how its client reached us.

Both sides of the link ask the same questions of a stream ("does the client send video?",
"does the handler send audio back?"); they are answered here once, from two enums, instead of
string comparisons spread over the gateway, the sessions and the worker. The enums are
``StrEnum``s, so their values are the very strings of gradio_webrtc's API (``mode="receive"``)
and of the wire format, and compare equal to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    """Which way media flows, as the component's ``mode`` says it (from the client's side)."""

    SEND_RECEIVE = "send-receive"  # the client sends, the handler answers with media
    SEND = "send"  # the client sends, the handler answers with data only (outputs)
    RECEIVE = "receive"  # the handler makes media, the client only receives


class Modality(StrEnum):
    """What kind of media a stream carries."""

    VIDEO = "video"
    AUDIO = "audio"
    AUDIO_VIDEO = "audio-video"


class Transport(StrEnum):
    """How a session's client reached the gateway; a handler sees it (``phone_mode``,
    ``get_current_context().websocket``)."""

    WEBRTC = "webrtc"  # a peer connection (browser, aiortc client)
    WEBSOCKET = "websocket"  # /websocket/offer: fastrtc's mu-law audio messages
    TELEPHONE = "telephone"  # /telephone/handler: a Twilio Media Streams call


@dataclass(frozen=True)
class StreamShape:
    """A stream's mode and modality, and every question the planes ask of the pair."""

    mode: Mode = Mode.SEND_RECEIVE
    modality: Modality = Modality.VIDEO

    @classmethod
    def parse(cls, mode: str, modality: str) -> StreamShape:
        """The shape of an app's ``mode=``/``modality=`` strings; a ValueError names the
        accepted values of the one that is wrong."""
        try:
            m = Mode(mode)
        except ValueError:
            raise ValueError(f"mode must be one of {[x.value for x in Mode]}, not {mode!r}") from None
        try:
            k = Modality(modality)
        except ValueError:
            raise ValueError(f"modality must be one of {[x.value for x in Modality]}, not {modality!r}") from None
        return cls(m, k)

    @property
    def has_video(self) -> bool:
        return self.modality in (Modality.VIDEO, Modality.AUDIO_VIDEO)

    @property
    def has_audio(self) -> bool:
        return self.modality in (Modality.AUDIO, Modality.AUDIO_VIDEO)

    @property
    def client_sends(self) -> bool:
        """The client sends media (and the server expects it: no media for long ends it)."""
        return self.mode != Mode.RECEIVE

    @property
    def server_sends(self) -> bool:
        """The handler's media goes back to the client."""
        return self.mode != Mode.SEND

    @property
    def takes_video(self) -> bool:
        """The handler receives video frames."""
        return self.client_sends and self.has_video

    @property
    def takes_audio(self) -> bool:
        """The handler receives audio."""
        return self.client_sends and self.has_audio

    @property
    def sends_video(self) -> bool:
        """The handler's video goes to the client."""
        return self.server_sends and self.has_video

    @property
    def sends_audio(self) -> bool:
        """The handler's audio goes to the client."""
        return self.server_sends and self.has_audio
