"""The echo finder the audio tests judge by (tests/echo.py): it passes an echo with a
stall in it, and fails what does not carry the chirp."""

from __future__ import annotations

import numpy as np

from runtime.clients.webrtc import AUDIO_RATE
from tests.echo import chirp, find_echo


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(AUDIO_RATE * seconds), np.int16)


def test_a_clean_echo_is_found_where_it_starts():
    echo = find_echo(np.concatenate([silence(0.5), chirp(), silence(1.0)]), chirp())
    assert echo.problems() == []
    assert abs(echo.start_s - 0.5) < 1e-3 and abs(echo.gaps_s) < 1e-3


def test_a_stall_that_delays_the_rest_passes_and_is_measured():
    c = chirp()
    cut = int(len(c) * 0.4)
    stalled = np.concatenate([silence(0.5), c[:cut], silence(0.1), c[cut:], silence(1.0)])
    echo = find_echo(stalled, c)
    assert echo.problems() == []
    assert abs(echo.gaps_s - 0.1) < 0.01


def test_what_does_not_carry_the_chirp_fails():
    rng = np.random.default_rng(0)
    c = chirp()
    cut = len(c) // 2
    for received in (
        silence(4.0),
        (rng.standard_normal(4 * AUDIO_RATE) * 3000).astype(np.int16),  # noise
        np.concatenate([silence(0.5), c[::-1], silence(1.0)]),  # the sweep backwards
        np.concatenate([silence(0.5), c[cut:], c[:cut], silence(1.0)]),  # halves swapped
        np.concatenate([silence(0.5), c[: cut // 2], silence(1.0), c[cut // 2 :], silence(1.0)]),  # 1 s hole
    ):
        assert find_echo(received, c).problems(), "accepted audio that is not the echo"
