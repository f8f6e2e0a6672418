"""A handler that shows what it knows of its session, for the WebSocket and phone tests.

On its first audio it sends its context to its socket (``get_current_context().websocket``,
as a fastrtc handler would) and then answers every input frame with a tone whose pitch says
whether it is on a phone (``phone_mode``): 440 Hz on a phone, 880 Hz otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.context import get_current_context
from workers.handlers import StreamHandler

PHONE_HZ, OTHER_HZ = 440.0, 880.0
TONE_LEVEL = 0.3  # of full scale


class ContextReporter(StreamHandler):
    def __init__(self) -> None:
        super().__init__()
        self.told = False
        self.owed = 0  # output samples owed for the input heard
        self.phase = 0

    def copy(self) -> ContextReporter:
        return ContextReporter()

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        rate, samples = frame
        if not self.told:
            self.told = True
            ctx = get_current_context()
            ctx.websocket.send_json_sync({"type": "context", "webrtc_id": ctx.webrtc_id, "phone_mode": self.phone_mode, "in_rate": rate})
        self.owed += samples.shape[-1] * self.output_sample_rate // rate

    def emit(self) -> Any:
        if self.owed <= 0:
            return None
        n, self.owed = self.owed, 0
        hz = PHONE_HZ if self.phone_mode else OTHER_HZ
        t = (self.phase + np.arange(n)) / self.output_sample_rate
        self.phase += n
        return self.output_sample_rate, (TONE_LEVEL * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)[None, :]


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])
