"""One meaning for a duration and a rate on every flag: the units module and its users."""

from __future__ import annotations

import pytest

from flashsale.core.rate_budget import auto_rate
from flashsale.core.stripe_limits import ENDPOINT_LIMIT, parse_limit
from flashsale.errors import ConfigError
from flashsale.ops.faults import parse_spec
from flashsale.stripe_sim.config import SimConfig
from flashsale.units import format_duration, parse_duration, parse_rate, parse_share_or_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("60s", 60.0), ("2m", 120.0), ("1.5h", 5400.0), ("0", 0.0), ("500us", 5e-4)],
)
def test_durations_carry_their_unit(text: str, seconds: float) -> None:
    assert parse_duration(text, "--timeout") == pytest.approx(seconds)
    assert parse_duration(format_duration(seconds), "again") == pytest.approx(seconds)


def test_a_bare_number_is_refused_with_the_unit_to_write_wherever_a_duration_goes() -> None:
    """It once meant milliseconds on some flags and seconds on others."""
    with pytest.raises(ConfigError, match=r"--timeout '200' has no unit: write 200ms or 200s"):
        parse_duration("200", "--timeout")
    with pytest.raises(ConfigError, match="has no unit"):
        SimConfig.from_options(latency="200")
    with pytest.raises(ConfigError, match="has no unit"):
        SimConfig().with_changes({"latency": 200})
    with pytest.raises(ConfigError, match="has no unit"):
        parse_spec("kill-worker@5")
    with pytest.raises(ConfigError, match="has no unit"):
        parse_share_or_duration("100", "--max-release-lag")
    assert SimConfig().with_changes({"latency": 0}).latency.fixed_s == 0


def test_rates_are_per_second_unless_they_say_otherwise() -> None:
    assert parse_rate("200/s") == 200 and parse_rate("600/m") == 10 and parse_rate("5") == 5
    with pytest.raises(ConfigError, match="above zero"):
        parse_rate("0/s", "--rate")
    with pytest.raises(ConfigError, match="not a rate"):
        parse_rate("fast", "--rate")


def test_stripes_limits_are_written_once_for_the_simulator_and_the_budget() -> None:
    assert parse_limit("test", "x") == 25 and parse_limit("live", "x") == 100
    assert parse_limit("off", "x") is None and parse_limit("40/s", "x") == 40
    assert SimConfig.from_options(rate_limit="live").rate_per_s == parse_limit("live", "x")
    # The workers repeat one operation: its 25/s, below the account's 100/s, is what binds.
    assert auto_rate("live") == pytest.approx(0.9 * ENDPOINT_LIMIT)
    assert SimConfig.from_options(rate_limit="live").endpoint_rate_per_s == ENDPOINT_LIMIT
    assert SimConfig.from_options(rate_limit="40").endpoint_rate_per_s is None
    with pytest.raises(ConfigError, match="rate limit must be 'test'"):
        parse_limit("fast", "rate limit")
