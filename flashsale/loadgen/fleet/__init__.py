"""Where a run's shards play: on the coordinator's loop, in local processes, or on agents.

Each transport is one module holding both of its ends; protocol.py is what they all carry.
"""

from __future__ import annotations

import os

from flashsale.loadgen.fleet.protocol import Fleet
from flashsale.loadgen.scenario import LoadConfig


def make_fleet(config: LoadConfig) -> Fleet:
    """The fleet a config asks for: --agents N, --processes N (default: one per core)."""
    if config.agents is not None:
        from flashsale.loadgen.fleet.agents import CeleryAgents

        assert config.agents_redis_url is not None  # load_config refuses agents without one
        return CeleryAgents(config.agents, config.agents_redis_url, config.accept_timeout_s)
    count = config.processes if config.processes is not None else os.cpu_count() or 1
    if count == 1:
        from flashsale.loadgen.fleet.inprocess import InProcess

        return InProcess()
    from flashsale.loadgen.fleet.processes import LocalProcesses

    return LocalProcesses(count)
