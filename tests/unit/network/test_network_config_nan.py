"""Review: NetworkConfig refuses NaN for every time and rate, not only the link timeouts.

Every comparison with NaN is false, so `x <= 0`, `a <= b` and `min(...) <= 0` let NaN
through; the value then reaches trio (move_on_after(nan) raises ValueError inside
the service's tasks) or a token bucket that never refills."""

from __future__ import annotations

import math

import pytest

from network.config import NetworkConfig

TIMES_AND_RATES = [
    "handshake_timeout_s",
    "ping_interval_s",
    "idle_timeout_s",
    "frame_timeout_s",
    "send_timeout_s",
    "ban_duration_s",
    "dial_backoff_base_s",
    "dial_backoff_max_s",
    "pex_interval_s",
    "handshakes_per_ip_per_s_max",
    "banned_ip_handshakes_per_s_max",
    "rate_pings_per_s_max",
]


@pytest.mark.parametrize("name", TIMES_AND_RATES)
def test_a_nan_time_or_rate_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        NetworkConfig(**{name: math.nan})  # type: ignore[arg-type]
