"""--admit-rate auto: the waiting room admits as fast as the Stripe budget and the pipeline take.

The controller is pure (core.auto_admission) and is checked on readings first; then a real
sale against a simulator limited to 20 requests/s: every customer pays, Stripe never answers
429, and the rate the room set stays within 0.95 of the limit.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import pytest
import redis
from pipeline_fixtures import Pipeline
from rich.console import Console

from flashsale.core import keys
from flashsale.core.auto_admission import (
    BACKOFF,
    GROWTH,
    MAX_RATE,
    MIN_RATE,
    START_RATE,
    AutoAdmission,
    Reading,
)
from flashsale.core.rate_budget import admission_budget
from flashsale.loadgen.client import loop
from flashsale.loadgen.coordinator import Coordinator
from flashsale.loadgen.fleet.inprocess import InProcess
from flashsale.loadgen.scenario import LoadConfig, build_schedule, parse_cards
from flashsale.settings import Settings

pytestmark = pytest.mark.timeout(180)

SIM = Settings(stripe_api_base="http://127.0.0.1:12111", stripe_secret_key="sk_test_x")


def test_the_budget_is_0_95_of_the_limit_and_never_above_the_workers() -> None:
    assert admission_budget(SIM) is None  # a simulator whose limit nobody gave
    # Live: 100/s for the account, but 25/s for POST /v1/charges, the one the workers repeat.
    assert admission_budget(SIM.replace(stripe_limit="live")) == pytest.approx(0.95 * 25)
    raised = SIM.replace(stripe_limit="live", stripe_endpoint_limit="100")
    assert admission_budget(raised) == pytest.approx(95.0)
    assert admission_budget(SIM.replace(stripe_limit="20")) == pytest.approx(19.0)
    assert admission_budget(raised.replace(stripe_rate="30")) == 30.0
    real_test_mode = Settings(
        stripe_api_base="https://api.stripe.com", stripe_secret_key="sk_test_x"
    )
    # Against Stripe the workers keep 0.9 of the sandbox's 25/s: that is the smaller share.
    assert admission_budget(real_test_mode) == pytest.approx(22.5)


def reading(at_s: float, admitted: int, placed: int, pending: int, holding: int = 0) -> Reading:
    return Reading(at_s=at_s, admitted=admitted, holding=holding, placed=placed, pending=pending)


def test_the_rate_starts_at_the_budget_and_drops_to_what_the_pipeline_finishes() -> None:
    auto = AutoAdmission(stripe_budget=50.0)
    assert auto.rate == 50.0
    assert auto.update(reading(0.0, admitted=0, placed=0, pending=0)) == 50.0  # capped
    # A second later 50 were admitted and placed, 30 answered: 20 waiting, over 1 s of work.
    # The rate falls towards the 15/s finished (smoothed), by at most BACKOFF in one second.
    rate = auto.update(reading(1.0, admitted=50, placed=50, pending=20))
    assert auto.finish_rate == pytest.approx(15.0)
    assert rate == pytest.approx(50.0 * BACKOFF)
    # Still behind: it reaches what the pipeline finishes.
    for second in range(2, 12):
        done = 30 + 15 * (second - 1)
        rate = auto.update(reading(float(second), admitted=done + 20, placed=done + 20, pending=20))
    assert rate == pytest.approx(15.0, rel=0.01)
    # The pipeline catches up: the rate grows by GROWTH a second, never past the budget.
    grown = auto.update(reading(12.0, admitted=200, placed=200, pending=0))
    assert grown == pytest.approx(rate * GROWTH)
    for second in range(13, 40):
        auto.update(reading(float(second), admitted=200, placed=200, pending=0))
    assert auto.rate == 50.0


def test_charges_per_admitted_customer_scale_the_ceiling() -> None:
    auto = AutoAdmission(stripe_budget=40.0)
    # 100 admitted, 10 still choosing a card, 180 orders: each decided customer paid twice.
    assert auto.update(reading(0.0, admitted=100, placed=180, pending=0, holding=10)) == 20.0
    unknown = AutoAdmission(stripe_budget=None)
    assert unknown.rate == START_RATE
    for second in range(60):
        unknown.update(reading(float(second), admitted=0, placed=0, pending=0))
    assert unknown.rate == MAX_RATE
    stalled = AutoAdmission(stripe_budget=40.0)
    for second in range(30):
        stalled.update(reading(float(second), admitted=40, placed=40, pending=40))
    assert stalled.rate == MIN_RATE


LIMIT = 20


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory(
        sim_flags=("--rate-limit", str(LIMIT)),
        server_flags=(
            *("--sku", "AUTO-1", "--stock", "80", "--ignore-ledger"),
            *("--waiting-room", "on", "--admit-rate", "auto"),
        ),
    )


def test_a_sale_admitted_by_the_budget_pays_everyone_without_a_429(pipeline: Pipeline) -> None:
    crowd = 80
    config = LoadConfig(
        url=pipeline.server_url,
        schedule=build_schedule(customers=crowd, rate="200/s"),
        cards=parse_cards("visa=100"),
        timeout_s=30,
        max_cpu_percent=101,  # a shared 2-core test box
        max_lag_s=5,
    )
    coordinator = Coordinator(config, InProcess(), Console(file=io.StringIO()))
    report = loop.run(coordinator.run()).report
    assert report.outcomes["succeeded"] == crowd, report.outcomes
    assert report.latency_ms["queue"]["p90"] > 500, "nobody waited: the budget did not bind"
    stats = httpx.get(f"{pipeline.local.sim_url}/_sim/stats").json()
    assert stats["rate_limited"]["total"] == 0
    state = redis.Redis.from_url(pipeline.redis_url, decode_responses=True).hgetall(
        keys.room_state("AUTO-1")
    )
    assert state["auto"] == "1"
    assert 0 < float(state["rate"]) <= 0.95 * LIMIT + 1e-9
    metrics = httpx.get(f"{pipeline.server_url}/metrics").text
    gauge = next(line for line in metrics.splitlines() if line.startswith("flashsale_room_admit"))
    assert 0 < float(gauge.split()[-1]) <= 0.95 * LIMIT + 1e-9
