"""What an engine reports of its load, for placing sessions and for `rtcpool status`."""

from __future__ import annotations

from dataclasses import dataclass

LOAD_SAMPLE_S = 1.0  # how often an engine measures its own CPU and event-loop lag


@dataclass(frozen=True)
class EngineLoad:
    """What an engine reports for placement and `rtcpool status`."""

    engine_id: str
    pid: int
    node_id: str
    sessions: int
    cpu_percent: float  # of one core, over the last LOAD_SAMPLE_S
    loop_lag_ms: float  # how late a LOAD_SAMPLE_S timer fired, last sample

    def score(self) -> float:
        """Lower is less loaded: sessions, plus CPU in units of what one session costs.
        A 640x480@30 video session costs a media process ~20-30% of a core (issue 10's
        measurement), so CPU_PER_SESSION_PERCENT converts CPU to sessions; a lagging loop
        counts as loaded whatever its session count."""
        return self.sessions + self.cpu_percent / CPU_PER_SESSION_PERCENT + self.loop_lag_ms / LAG_PER_SESSION_MS


CPU_PER_SESSION_PERCENT = 25.0  # CPU% of one core a video session costs a media process, for placement
LAG_PER_SESSION_MS = 20.0  # event-loop lag counted as one more session, for placement
