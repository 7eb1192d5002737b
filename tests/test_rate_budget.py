"""The shared Stripe budget (core.rate_budget) against real Redis, and workers that keep to it."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from pipeline_fixtures import Pipeline

from flashsale.core import rate_budget
from flashsale.core.rate_budget import RateBudget
from flashsale.errors import ConfigError

# A scheduler may wake a sleeper this late on a busy 2-core machine: it can only push a request
# later, which squeezes at most rate * LATE_S extra requests into a window.
LATE_S = 0.1


def most_in_any_window(stamps: list[float], window_s: float) -> int:
    """The largest number of stamps inside any window of window_s seconds (sliding)."""
    stamps = sorted(stamps)
    most, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] > window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def budget(url: str, rate: float, burst: int = 1, max_wait_s: float = 5.0) -> RateBudget:
    client = redis.Redis.from_url(url, decode_responses=True)
    return RateBudget(client, f"test-budget:{uuid.uuid4()}", rate, burst, max_wait_s)


def test_threads_together_never_exceed_the_rate(redis_url: str) -> None:
    rate, burst, total = 50.0, 5, 100
    shared = budget(redis_url, rate, burst)
    stamps: list[float] = []
    lock = threading.Lock()

    def spend() -> None:
        while True:
            with lock:
                if len(stamps) >= total:
                    return
            assert shared.acquire().granted
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(stamps) >= total
    assert most_in_any_window(stamps, 1.0) <= rate * (1.0 + LATE_S) + burst
    # It cannot be faster than the rate: the first `burst` are free, the rest are 1/rate apart.
    assert max(stamps) - min(stamps) >= (len(stamps) - burst - 1) / rate


def _spend_in_process(url: str, key: str, rate: float, count: int, out: Any) -> None:
    shared = RateBudget(redis.Redis.from_url(url, decode_responses=True), key, rate, 1, 5.0)
    for _ in range(count):
        assert shared.acquire().granted
        out.put(time.time())


def test_processes_share_one_budget(redis_url: str) -> None:
    rate, per_process, processes = 60.0, 30, 3
    key = f"test-budget:{uuid.uuid4()}"
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [
        context.Process(target=_spend_in_process, args=(redis_url, key, rate, per_process, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    stamps = [out.get(timeout=30) for _ in range(per_process * processes)]
    for child in children:
        child.join(timeout=10)
        assert child.exitcode == 0
    assert most_in_any_window(stamps, 1.0) <= rate * (1.0 + LATE_S) + 1
    assert max(stamps) - min(stamps) >= (len(stamps) - 2) / rate


def test_a_slot_too_far_away_is_refused_and_not_spent(redis_url: str) -> None:
    shared = budget(redis_url, rate=1.0, max_wait_s=0.5)
    first = shared.reserve()
    assert first.granted and first.wait_s == 0
    refused = shared.reserve()
    assert not refused.granted and 0.5 < refused.wait_s <= 1.0
    # Refusals book nothing: the next free slot is still about one second after the first.
    again = shared.reserve()
    assert not again.granted and again.wait_s <= refused.wait_s


def test_a_budget_booked_ahead_makes_callers_wait_their_turn(redis_url: str) -> None:
    shared = budget(redis_url, rate=10.0, burst=1)
    waits = [shared.reserve().wait_s for _ in range(5)]
    assert waits[0] == 0
    # Each reservation lands one interval (0.1 s) after the previous one.
    for earlier, later in zip(waits, waits[1:], strict=False):
        assert later == pytest.approx(earlier + 0.1, abs=0.02)


def test_rates_from_flags_and_modes() -> None:
    assert rate_budget.parse_rate("auto") == "auto"
    assert rate_budget.parse_rate("off") is None
    assert rate_budget.parse_rate("live") == 100.0
    assert rate_budget.parse_rate("42/s") == 42.0
    with pytest.raises(ConfigError):
        rate_budget.parse_rate("fast")
    with pytest.raises(ConfigError):
        rate_budget.parse_rate("-3")
    # docs.stripe.com/rate-limits: 100/s live, 25/s in a sandbox, and 25/s per endpoint in both.
    assert rate_budget.auto_rate("live") == pytest.approx(0.9 * 25)
    assert rate_budget.auto_rate("live", None, "100") == pytest.approx(90.0)
    assert rate_budget.auto_rate("test") == pytest.approx(22.5)
    assert rate_budget.auto_rate("simulator", "live") == pytest.approx(0.99 * 25)
    assert rate_budget.auto_rate("simulator", "live", "off") == pytest.approx(99.0)
    assert rate_budget.auto_rate("simulator", "off", "stripe") == pytest.approx(0.99 * 25)
    assert rate_budget.auto_rate("simulator", "40") == pytest.approx(39.6)
    assert rate_budget.auto_rate("simulator", "off") is None
    assert rate_budget.auto_rate("simulator", None) is None
    key = rate_budget.budget_key("sk_test_abc")
    assert "sk_test" not in key and key == rate_budget.budget_key("sk_test_abc")


def test_two_workers_keep_to_the_simulators_limit(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    """Two workers, 16 threads, at test mode's 25/s: the default budget sends no request the
    simulator has to refuse, and every order succeeds."""
    pipeline = pipeline_factory(sim_flags=("--rate-limit", "test"))
    pipeline.start_worker()
    workers = [child for child in pipeline.children if child.name.startswith("worker")]
    placed = []
    for _ in range(50):
        session = pipeline.session()
        response = pipeline.charge(session, "tok_visa")
        assert response.status_code == 202, response.text
        placed.append((session, response.json()["order_id"]))
    for session, order_id in placed:
        assert pipeline.wait_final(session, order_id, timeout_s=30)["status"] == "succeeded"
    stats = httpx.get(f"{pipeline.sim_url}/_sim/stats", timeout=10).json()
    assert stats["rate_limited"]["total"] == 0, stats["rate_limited"]
    assert stats["charges"]["total"] == len(placed)
    for worker in workers:
        assert "Stripe budget: 24.75 requests/s" in worker.log_text()
