"""The dashboard's system panel comes from the server's /metrics: real tasks queued, seen there."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Callable

from pipeline_fixtures import Pipeline
from rich.console import Console

from flashsale.core import jobs
from flashsale.loadgen.client.http import HttpClient
from flashsale.loadgen.coordinator import read_system
from flashsale.loadgen.dashboard import Snapshot, render
from flashsale.loadgen.stats import RunStats


def system_of(url: str) -> dict[str, object]:
    async def read() -> dict[str, object]:
        async with HttpClient() as http:
            return await read_system(http, url)

    return asyncio.run(read())


def test_queued_charges_show_on_the_dashboards_system_panel(
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    pipeline = pipeline_factory(server_flags=("--stock", "10"), with_worker=False)
    for _ in range(3):
        session = pipeline.session()
        assert pipeline.charge(session, "tok_visa").status_code == 202
    # No worker yet: the three create_charge tasks wait in the charges queue.
    assert pipeline.redis().llen(jobs.QUEUE) == 3
    metrics = pipeline.http.get(f"{pipeline.server_url}/metrics").text
    assert 'flashsale_queue_depth{queue="flashsale.charges"} 3.0' in metrics
    system = system_of(pipeline.server_url)
    assert system["charges queued"] == 3 and system["stock left"] == 7

    snapshot = Snapshot(
        stats=RunStats(),
        elapsed_s=1.0,
        model="open",
        target_per_s=None,
        achieved_per_s=0.0,
        arrived=3,
        planned=3,
        system=system,
    )
    console = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    console.print(render(snapshot))
    assert re.search(r"charges queued[\s│]+3", console.export_text())

    pipeline.start_worker()
    deadline = time.monotonic() + 30
    while system_of(pipeline.server_url)["charges queued"] != 0:
        assert time.monotonic() < deadline, "the worker never drained the queue"
        time.sleep(0.1)


def test_an_unreachable_server_leaves_the_panel_saying_so() -> None:
    system = system_of("http://127.0.0.1:9")
    assert str(system["server metrics"]).startswith("unavailable")
