"""server/admission.py: a server process works on at most --max-in-flight HTTP requests; the
rest wait their turn up to --queue-wait, then get a counted 503 with Retry-After.

Held for real: the test SIGSTOPs a Redis of its own, so the requests that got a place stay in
progress (their Redis commands unanswered) while the others wait past the deadline. No timing
is asserted: the shed answers are told apart by what they say, and Redis resumes once they are
all in.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pipeline_fixtures import TEST_SECRET, Pipeline

from flashsale.cli import cli
from flashsale.core import store
from flashsale.errors import ConfigError
from flashsale.ops.pipeline import LocalPipeline
from flashsale.settings import MAX_IN_FLIGHT, Settings

LIMIT = 2
CUSTOMERS = 6


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """Simulator and server on a Redis of their own (the test stops and resumes it)."""
    local = LocalPipeline(
        tmp_path, env={"STRIPE_SECRET_KEY": "sk_test_pipeline", "FLASHSALE_SECRET": TEST_SECRET}
    )
    pipeline = Pipeline(local)
    try:
        local.start_redis()
        local.start_simulator()
        local.start_server("--max-in-flight", str(LIMIT), "--queue-wait", "1s")
        yield pipeline
    finally:
        pipeline.stop()


def metric(pipeline: Pipeline, name: str) -> float:
    for line in pipeline.http.get(f"{pipeline.server_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def post_charge(url: str, session: dict[str, Any], token: str) -> httpx.Response:
    body = {"customer_id": session["customer_id"], "room_token": session["room_token"]}
    with httpx.Client(timeout=30) as client:
        return client.post(f"{url}/charges", json={**body, "token": token})


def test_past_the_bound_requests_wait_then_are_shed_with_retry_after(pipeline: Pipeline) -> None:
    customers = [(pipeline.session(), pipeline.tokenize()) for _ in range(CUSTOMERS)]
    (redis_node,) = pipeline.local.of_kind("redis")
    redis_node.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(CUSTOMERS) as pool:
            futures = [pool.submit(post_charge, pipeline.server_url, *c) for c in customers]
            answers = as_completed(futures, timeout=20)
            shed = [next(answers).result() for _ in range(CUSTOMERS - LIMIT)]
            # Every request past the bound is answered while the LIMIT in progress still wait
            # on the stopped Redis; now let them finish.
            redis_node.signal(signal.SIGCONT)
            served = [future.result() for future in answers]
    finally:
        redis_node.signal(signal.SIGCONT)
    for response in shed:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
    assert [response.status_code for response in served] == [202] * LIMIT
    assert metric(pipeline, 'flashsale_http_shed_total{route="/charges"}') == CUSTOMERS - LIMIT
    assert metric(
        pipeline, 'flashsale_http_requests_total{method="POST",route="/charges",status="503"}'
    ) == (CUSTOMERS - LIMIT)
    assert metric(pipeline, "flashsale_http_in_progress") == 0
    assert metric(pipeline, "flashsale_http_waiting") == 0
    log = (pipeline.log_dir / "server.log").read_text()
    assert log.count("shed POST /charges after waiting") == CUSTOMERS - LIMIT
    # And the server serves on: a new customer pays.
    assert pipeline.charge(pipeline.session(), pipeline.tokenize()).status_code == 202


def test_the_bound_leaves_redis_connections_for_the_socket_handlers() -> None:
    assert Settings().max_in_flight <= MAX_IN_FLIGHT < store.MAX_CONNECTIONS


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-in-flight", "0"], "--max-in-flight"),
        (["--max-in-flight", str(MAX_IN_FLIGHT + 1)], "--max-in-flight"),
        (["--queue-wait", "10"], "has no unit"),
    ],
)
def test_bad_bounds_are_refused_before_serving(flags: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, ["serve", *flags])
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_settings_refuse_a_bound_past_the_pool() -> None:
    with pytest.raises(ConfigError, match="max in flight"):
        Settings(max_in_flight=MAX_IN_FLIGHT + 1).checked()
    with pytest.raises(ConfigError, match="queue wait"):
        Settings(queue_wait_s=0).checked()
