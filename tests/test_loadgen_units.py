"""Load generator pure parts: schedules, card mix, HDR stats, merge, SLOs (no pipeline needed)."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from flashsale import cli
from flashsale.errors import ConfigError
from flashsale.loadgen.scenario import (
    DEFAULT_CARDS,
    DEFAULT_PATIENCE,
    MAX_PATIENCE_S,
    TEST_CARDS,
    ArrivalRate,
    build_schedule,
    parse_cards,
    parse_patience,
    parse_ramp,
)
from flashsale.loadgen.stats import (
    Journey,
    RunStats,
    evaluate,
    format_actual,
    parse_slo,
    percentile_curve,
)
from flashsale.units import parse_duration, parse_rate

# -- schedules ---------------------------------------------------------------------------------


def test_constant_rate_spaces_arrivals_evenly_and_stops_at_the_customer_bound() -> None:
    schedule = build_schedule(rate="200/s", customers=5)
    assert list(schedule.arrivals()) == pytest.approx([0.0, 0.005, 0.010, 0.015, 0.020])
    assert schedule.model == "open"


def test_duration_bounds_arrivals() -> None:
    arrivals = list(build_schedule(rate="10/s", duration="1s").arrivals())
    assert len(arrivals) == 10
    assert max(arrivals) < 1.0


def test_customers_and_duration_together_stop_at_whichever_comes_first() -> None:
    assert len(list(build_schedule(rate="10/s", customers=3, duration="10s").arrivals())) == 3
    assert len(list(build_schedule(rate="10/s", customers=300, duration="2s").arrivals())) == 20


def test_ramp_rises_linearly_then_holds_its_end_rate() -> None:
    ramp = parse_ramp("10/s:500/s:60s")
    assert ramp.at(0) == 10 and ramp.at(30) == pytest.approx(255) and ramp.at(90) == 500
    # Expected arrivals over the ramp are its area: (10 + 500) / 2 * 60.
    assert ramp.cumulative(60) == pytest.approx(15_300)
    for n in (1, 100, 5_000, 15_300, 20_000):
        assert ramp.cumulative(ramp.time_of(n)) == pytest.approx(n)
    arrivals = list(build_schedule(ramp="10/s:500/s:60s", duration="60s").arrivals())
    assert len(arrivals) == pytest.approx(15_300, abs=1)
    first_second = sum(1 for t in arrivals if t < 1)
    last_second = sum(1 for t in arrivals if t >= 59)
    # Rate rises 8.17/s per second: 14.1 expected in the first second, 495.9 in the last.
    assert 14 <= first_second <= 16 and 495 <= last_second <= 497


def test_poisson_is_seeded_and_has_the_target_mean_rate() -> None:
    one = list(build_schedule(rate="100/s", poisson=True, seed=7, customers=2000).arrivals())
    two = list(build_schedule(rate="100/s", poisson=True, seed=7, customers=2000).arrivals())
    other = list(build_schedule(rate="100/s", poisson=True, seed=8, customers=2000).arrivals())
    assert one == two and one != other
    gaps = [b - a for a, b in zip(one, one[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.01, rel=0.1)
    # Exponential gaps: the standard deviation is about the mean, unlike constant spacing.
    assert statistics.stdev(gaps) == pytest.approx(0.01, rel=0.15)


def test_closed_model_and_doors_open() -> None:
    closed = build_schedule(concurrency=20, duration="5s")
    assert closed.model == "closed" and list(closed.arrivals()) == []
    doors = build_schedule(doors_open=True, customers=50)
    assert doors.model == "doors-open" and len(list(doors.arrivals())) == 50


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rate": "10/s"}, "bound the run"),
        ({"rate": "fast", "customers": 5}, "not a rate"),
        ({"rate": "0/s", "customers": 5}, "above zero"),
        ({"rate": "5/s", "ramp": "1/s:2/s:3s", "customers": 5}, "either --rate or --ramp"),
        ({"ramp": "1/s:2/s", "customers": 5}, "START:END:DURATION"),
        ({"concurrency": 5, "rate": "5/s", "customers": 5}, "closed model"),
        ({"doors_open": True, "duration": "5s"}, "needs --customers"),
        ({"rate": "5/s", "duration": "soon"}, "not a duration"),
        ({"rate": "5/s", "customers": 0}, "above zero"),
    ],
)
def test_bad_load_flags_are_config_errors(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_schedule(**flags)  # type: ignore[arg-type]


def test_rates_and_durations_parse_units() -> None:
    assert parse_rate("200/s") == 200 and parse_rate("600/m") == 10 and parse_rate("5") == 5
    assert parse_duration("250ms") == 0.25 and parse_duration("2m") == 120
    assert ArrivalRate(5, 5).time_of(10) == 2


# -- card mix ----------------------------------------------------------------------------------


def test_card_mix_hands_out_exact_proportions_interleaved() -> None:
    mix = parse_cards(DEFAULT_CARDS)
    assert mix.expected_counts(100) == {
        "visa": 85,
        "insufficient_funds": 5,
        "generic_decline": 5,
        "expired_card": 3,
        "incorrect_cvc": 2,
    }
    # Interleaved, not in blocks: the first 20 customers already see a decline.
    assert any(card.name != "visa" for card in mix.first(20))
    assert mix.expected_counts(200)["visa"] == 170


def test_card_names_map_to_stripe_test_numbers_and_tokens() -> None:
    mix = parse_cards("visa=1,insufficient_funds=1")
    cards = {card.name: card for card in mix.first(2)}
    assert cards["visa"].number == "4242424242424242" and cards["visa"].token == "tok_visa"
    assert cards["insufficient_funds"].number == "4000000000009995"
    assert cards["insufficient_funds"].token == "tok_chargeDeclinedInsufficientFunds"
    assert TEST_CARDS["incorrect_number"].token is None


@pytest.mark.parametrize(
    ("spec", "tokenize", "message"),
    [
        ("visa=85,mystery=5", "raw", "unknown test card 'mystery'"),
        ("visa=x", "raw", "whole number"),
        ("visa=-1", "raw", "negative"),
        ("visa=0", "raw", "at least one"),
        ("visa=1,visa=2", "raw", "twice"),
        ("visa=9,incorrect_number=1", "test-tokens", "no tok_ alias"),
        ("visa=1", "magic", "--tokenize"),
    ],
)
def test_bad_card_specs_are_config_errors(spec: str, tokenize: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cards(spec, tokenize)


# -- stats -------------------------------------------------------------------------------------


def journey(
    index: int = 0, outcome: str = "succeeded", lag: float = 0.0, **phases: float
) -> Journey:
    """A finished customer scheduled at t=index*0.01, started `lag` later."""
    scheduled = index * 0.01
    started = scheduled + lag
    phases = phases or {"session": 0.002, "connect": 0.003, "submit": 0.004, "result": 0.2}
    return Journey(
        index=index,
        card="visa",
        scheduled=scheduled,
        started=started,
        outcome=outcome,
        finished=started + sum(phases.values()),
        phases=phases,
    )


def test_phases_are_recorded_in_microseconds_with_three_significant_digits() -> None:
    stats = RunStats()
    stats.record(journey(result=0.2))
    summary = stats.phase_summary("result")
    assert summary["count"] == 1
    assert summary["p50"] == pytest.approx(200.0, rel=1e-3)
    stats.record(journey(session=0.001234))
    assert stats.phase_summary("session")["max"] == 1.234  # µs resolution below 2 ms


def test_zero_durations_are_clamped_to_one_microsecond_and_counted() -> None:
    stats = RunStats()
    stats.record(journey(session=0.0, submit=0.0000001))
    # Two phases and the 0.1 µs journey itself; the corrected copies are not counted again.
    assert stats.clamped == 3
    assert stats.phase_summary("session")["max"] == 0.001  # 1 µs, never 0 ms
    assert stats.phase_summary("session")["count"] == 1


def test_corrected_view_charges_schedule_lag_uncorrected_does_not() -> None:
    stats = RunStats()
    stats.record(journey(lag=1.0, session=0.002, result=0.1))
    corrected = stats.phase_summary("e2e")
    uncorrected = stats.phase_summary("e2e", corrected=False)
    assert corrected["max"] == pytest.approx(1102, rel=1e-3)
    assert uncorrected["max"] == pytest.approx(102, rel=1e-3)
    assert stats.phase_summary("session")["max"] == pytest.approx(1002, rel=1e-3)
    assert stats.phase_summary("session", corrected=False)["max"] == pytest.approx(2, rel=1e-3)
    assert stats.phase_summary("result")["max"] == stats.phase_summary("result", False)["max"]


def test_outcomes_decline_codes_and_unanswered_customers() -> None:
    stats = RunStats()
    stats.record(journey(0))
    declined = journey(1, outcome="declined")
    declined.decline_code = "insufficient_funds"
    stats.record(declined)
    stats.record(journey(2, outcome="timeout", result=30.0))
    assert stats.outcomes["succeeded"] == 1 and stats.outcomes["declined"] == 1
    assert stats.decline_codes == {"insufficient_funds": 1}
    assert stats.ratio("timeout") == pytest.approx(1 / 3)
    # A timeout is not an answer: it has its own histogram and stays out of e2e.
    assert stats.phase_summary("e2e")["count"] == 2
    assert stats.outcome_summary("timeout")["count"] == 1


def test_interval_series_follows_completion_times() -> None:
    stats = RunStats(interval_s=1.0)
    for i in range(10):
        stats.record_arrival(i * 0.3)
        stats.record(journey(i * 30, result=0.1))  # scheduled at 0.3 s steps
    series = stats.series()
    assert [row["t_s"] for row in series] == [0.0, 1.0, 2.0]  # last finishes at 2.8 s
    assert sum(row["outcomes"].get("succeeded", 0) for row in series) == 10
    assert sum(row["arrivals"] for row in series) == 10
    assert series[0]["e2e_ms"]["count"] >= 1


def test_merge_is_lossless_through_json() -> None:
    one, two = RunStats(), RunStats()
    for i in range(50):
        one.record(journey(i, result=0.1 + i / 1000))
        two.record(journey(i, outcome="declined", result=0.3 + i / 1000, lag=0.01))
    together = RunStats()
    for i in range(50):
        together.record(journey(i, result=0.1 + i / 1000))
        together.record(journey(i, outcome="declined", result=0.3 + i / 1000, lag=0.01))
    shipped = RunStats.from_dict(json.loads(json.dumps(two.to_dict())))
    merged = RunStats.from_dict(json.loads(json.dumps(one.to_dict()))).merge(shipped)
    assert merged.to_dict() == together.to_dict()
    assert merged.phase_summary("e2e") == together.phase_summary("e2e")
    assert merged.outcomes["declined"] == 50


def test_percentile_curve_reaches_the_maximum() -> None:
    stats = RunStats()
    for i in range(1, 1001):
        stats.record(journey(i, result=i / 1000))
    curve = percentile_curve(stats.corrected["result"])
    assert curve[0][0] < 10 and curve[-1][0] >= 99.9
    assert curve[-1][1] == pytest.approx(1000, rel=2e-3)


# -- SLOs --------------------------------------------------------------------------------------


def test_slos_parse_units_and_evaluate_against_final_histograms() -> None:
    stats = RunStats()
    for i in range(1000):
        stats.record(journey(i, outcome="timeout" if i == 0 else "succeeded", result=0.2))
    results = evaluate(
        [
            parse_slo("e2e.p99<2s"),
            parse_slo("result.p50 <= 150ms"),
            parse_slo("timeout.ratio<0.1%"),
            parse_slo("timeout.ratio<=0.001"),
            parse_slo("succeeded.count>=500"),
        ],
        stats,
    )
    assert [r.passed for r in results] == [True, False, False, True, True]
    assert results[1].actual == pytest.approx(200, rel=1e-3)
    assert results[4].as_dict()["actual"] == 999


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency.p99<2s", "unknown metric 'latency'"),
        ("e2e.p42<2s", "no 'p42'"),
        ("succeeded.p99<2s", "no 'p99'"),
        ("e2e.p99<soon", "not a time"),
        ("timeout.ratio<lots", "not a ratio"),
        ("e2e p99 under 2s", "must look like"),
    ],
)
def test_bad_slos_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_slo(text)
    assert error.value.exit_code == 2


# -- the waiting room: patience and fairness ----------------------------------------------------


def test_patience_is_a_duration_or_a_lognormal_each_customer_draws_from() -> None:
    assert parse_patience("20m").sample() == 1200
    spread = parse_patience("lognormal:p50=10m,p99=60m")
    rng = random.Random(7)
    draws = sorted(spread.sample(rng) for _ in range(4000))
    assert 540 < statistics.median(draws) < 660
    assert 3000 < draws[int(0.99 * len(draws))] < 4400
    assert max(draws) <= MAX_PATIENCE_S
    for bad, message in [("0", "longer than 0"), ("soon", "not a duration"), ("9h", "at most")]:
        with pytest.raises(ConfigError, match=message):
            parse_patience(bad)


def test_the_patience_flag_shows_the_default_the_run_uses() -> None:
    option = next(p for p in cli.loadgen.params if p.name == "patience")
    assert option.default == str(DEFAULT_PATIENCE)


def queued(index: int, arrived: float, left: float, admitted: bool = True) -> Journey:
    found = journey(index)
    found.queue_span = (arrived, left, admitted)
    return found


def test_overtaking_counts_admissions_ahead_of_an_arrival_over_a_second_earlier() -> None:
    stats = RunStats()
    stats.record(queued(0, arrived=100.0, left=110.0))
    stats.record(queued(1, arrived=100.5, left=105.0))  # 0.5 s later: within the slack
    stats.record(queued(2, arrived=101.5, left=109.0))  # overtook 0 (1.5 s earlier, waiting)
    stats.record(queued(3, arrived=103.0, left=109.9))  # within the admission slack of 0
    stats.record(queued(4, arrived=104.0, left=130.0, admitted=False))  # gave up: never counted
    stats.record(queued(5, arrived=106.0, left=120.0))  # overtook 4, who still waited
    shipped = RunStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert stats.overtakes() == shipped.overtakes() == 2


def test_a_latency_gate_on_a_phase_nobody_went_through_is_not_met() -> None:
    """checkout.p99<2s in a sale without a waiting room measures nothing: not a pass."""
    stats = RunStats()
    stats.record(journey(0))
    [checkout, count] = evaluate(
        [parse_slo("checkout.p99<2s"), parse_slo("checkout.count==0")], stats
    )
    assert checkout.actual is None and not checkout.passed
    assert format_actual(checkout.slo.unit, checkout.actual) == "none measured"
    assert count.actual == 0 and count.passed  # a count of nobody is a measurement
    stats.record(queued(1, arrived=1.0, left=2.0))
    stats.corrected["checkout"].record_value(1_500_000)
    [checkout] = evaluate([parse_slo("checkout.p99<2s")], stats)
    assert checkout.passed and checkout.actual == pytest.approx(1500, rel=0.01)


@pytest.mark.parametrize(
    ("mode", "api_base", "alias"),
    [
        ("auto", "http://127.0.0.1:12111", False),  # the simulator: numbers, as Stripe.js sends
        ("auto", "https://api.stripe.com", True),  # real test mode refuses them from us
        ("auto", "https://stripe.com.example.org", False),
        ("raw", "https://api.stripe.com", False),
        ("test-tokens", "http://127.0.0.1:12111", True),
    ],
)
def test_auto_tokenize_uses_aliases_against_real_stripe_only(
    mode: str, api_base: str, alias: bool
) -> None:
    from flashsale.loadgen.customer import tokenize_with_alias

    assert tokenize_with_alias(mode, api_base) is alias
