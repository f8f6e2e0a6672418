"""runtime/media/budget.py: media in real-time units, on an injected nanosecond clock."""

from __future__ import annotations

import pytest

from runtime.guard.budgets import BudgetsConfig
from runtime.media.budget import ADMIT, DROP, END, NS_PER_S, RealTimeBudget, RtpBudget, audio_budget

RATE = 8_000  # samples/s: a phone's mu-law
CHUNK = 160  # 20 ms of it


def test_real_time_is_admitted_for_ever():
    budget = RealTimeBudget(RATE, RATE, 10 * RATE, now_ns=0)
    now = 0
    for _ in range(50 * 60):  # a minute of 20 ms chunks, on time
        now += NS_PER_S // 50
        assert budget.admit(CHUNK, now) == ADMIT
    assert budget.dropped == 0


def test_a_burst_then_the_rate_then_drops():
    budget = RealTimeBudget(RATE, 2 * RATE, 10 * RATE, now_ns=0)
    admitted = sum(CHUNK for _ in range(200) if budget.admit(CHUNK, 0) == ADMIT)
    assert admitted == 2 * RATE  # the burst, all at once
    assert budget.admit(CHUNK, 0) == DROP
    # one second later: one second's worth, no more
    admitted = sum(CHUNK for _ in range(200) if budget.admit(CHUNK, NS_PER_S) == ADMIT)
    assert admitted == RATE


def test_sustained_excess_ends_and_a_brief_one_is_forgiven():
    # 60x real time: 60 s of audio in 1 s ends once ~10 s beyond the rate were dropped
    budget = RealTimeBudget(RATE, 2 * RATE, 10 * RATE, now_ns=0)
    verdicts = []
    for i in range(60 * 50):
        verdicts.append(budget.admit(CHUNK, i * NS_PER_S // (60 * 50)))
        if verdicts[-1] == END:
            break
    assert verdicts[-1] == END
    assert 10 * RATE <= budget.dropped <= 14 * RATE
    # 3 s over the rate once, then real time: dropped, never ended, forgotten in time
    budget = RealTimeBudget(RATE, 2 * RATE, 10 * RATE, now_ns=0)
    assert {budget.admit(CHUNK, 0) for _ in range(5 * 50)} == {ADMIT, DROP}
    now = 0
    for _ in range(50 * 30):
        now += NS_PER_S // 50
        assert budget.admit(CHUNK, now) == ADMIT


def test_twice_the_rate_is_trimmed_not_ended():
    budget = RealTimeBudget(RATE, RATE, 10 * RATE, now_ns=0)
    verdicts = [budget.admit(CHUNK, i * NS_PER_S // 100) for i in range(100 * 60)]  # 2x, a minute
    assert END not in verdicts and DROP in verdicts
    assert abs(verdicts.count(ADMIT) * CHUNK - 61 * RATE) <= CHUNK


def test_clock_going_back_neither_refills_nor_drains():
    budget = RealTimeBudget(RATE, RATE, RATE, now_ns=10 * NS_PER_S)
    assert budget.admit(RATE, 10 * NS_PER_S) == ADMIT
    assert budget.admit(1, 5 * NS_PER_S) == DROP


@pytest.mark.parametrize(("rate", "burst", "end"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_parameters(rate, burst, end):
    with pytest.raises(ValueError):
        RealTimeBudget(rate, burst, end)


def test_audio_budget_is_the_config_in_samples():
    cfg = BudgetsConfig()
    budget = audio_budget(cfg, RATE)
    assert budget.units_per_s == round(RATE * cfg.audio_realtime_factor)
    now = budget._stamp
    assert sum(CHUNK for _ in range(1000) if budget.admit(CHUNK, now) == ADMIT) == round(RATE * cfg.audio_burst_s)


def test_rtp_budget_counts_packets_and_bytes():
    cfg = BudgetsConfig(rtp_packets_per_s=10, rtp_bytes_per_s=10_000, rtp_burst_s=1.0, abuse_end_s=1.0)
    seen: list[tuple[str, int]] = []
    budget = RtpBudget(cfg, lambda what, verdict: seen.append((what, verdict)))
    assert [budget.admit(100) for _ in range(10)] == [True] * 10
    assert budget.admit(100) is False and seen == [("RTP packets", DROP)]
    bytes_only = RtpBudget(cfg, lambda what, verdict: seen.append((what, verdict)))
    assert bytes_only.admit(10_000) is True and bytes_only.admit(1) is False
    assert seen[-1] == ("RTP bytes", DROP)
    # a flood: dropped, then ended
    for _ in range(30):
        budget.admit(100)
    assert seen[-1][1] == END and budget.dropped >= 11


def test_budgets_config_defaults_and_checks():
    cfg = BudgetsConfig()
    assert cfg.max_data_channel_message_bytes == 64 * 1024
    assert cfg.audio_realtime_factor == 1.2
    with pytest.raises(ValueError):
        BudgetsConfig(max_data_channel_message_bytes=64 * 1024, max_data_channel_buffered_bytes=64 * 1024)
    with pytest.raises(ValueError):
        BudgetsConfig.model_validate({"audio_realtime_factor": 0.5})
    with pytest.raises(ValueError):
        BudgetsConfig.model_validate({"unknown": 1})
