"""LocalPipeline restarting a component: the new process is waited for, not the old one's line."""

from __future__ import annotations

from pathlib import Path

import httpx

from flashsale.ops.pipeline import LocalPipeline


def test_a_second_simulator_in_one_pipeline_is_the_one_waited_for(tmp_path: Path) -> None:
    """Both write one log (appended): the second start must answer with its own URL, once it
    listens, not with the first one's line (a benchmark's second run once asked a dead port)."""
    with LocalPipeline(tmp_path) as pipeline:
        first = pipeline.start_simulator("--rate-limit", "off")
        pipeline.stop_kind("stripe-sim")
        second = pipeline.start_simulator("--rate-limit", "off")
        assert second != first
        assert httpx.get(f"{second}/_sim/stats", timeout=5).status_code == 200
        assert pipeline.env["STRIPE_API_BASE"] == second
        log = (pipeline.log_dir / "stripe-sim.log").read_text()
        assert log.count("listening on") == 2  # one log, both runs
