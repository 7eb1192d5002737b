"""The rehearsal's control plane: `/_sim/config` to change faults and limits live, `/_sim/stats`."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from flashsale.errors import ConfigError
from flashsale.stripe_sim.api_errors import invalid
from flashsale.stripe_sim.responses import json_response, read_body, unrecognized

if TYPE_CHECKING:
    from flashsale.stripe_sim.server import Simulator

log = logging.getLogger("flashsale.stripe_sim")

CONFIG_USAGE = 'POST /_sim/config takes a JSON object, e.g. {"latency": "50ms", "error_rate": 0.1}'


async def control(
    sim: Simulator, request: web.BaseRequest, path: str, request_id: str
) -> web.Response:
    method = request.method
    if path == "/_sim/stats" and method == "GET":
        return json_response(200, stats(sim), request_id)
    if path == "/_sim/config" and method == "GET":
        return json_response(200, sim.config.as_dict(), request_id)
    if path == "/_sim/config" and method == "POST":
        try:
            changes = json.loads(await read_body(request) or b"{}")
        except ValueError:
            raise invalid(CONFIG_USAGE) from None
        if not isinstance(changes, dict):
            raise invalid(CONFIG_USAGE)
        try:
            config = sim.config.with_changes(changes)
        except ConfigError as error:
            raise invalid(str(error)) from None
        sim.set_config(config)
        log.warning("stripe-sim settings now: %s", config.describe())
        return json_response(200, config.as_dict(), request_id)
    raise unrecognized(method, path)


def stats(sim: Simulator) -> dict[str, object]:
    """Every request by route and status, refusals by reason, faults injected, ledger sizes."""
    requests: dict[str, dict[str, int]] = {}
    for (label, status), count in sorted(sim.counts.items()):
        requests.setdefault(label, {})[status] = count
    ledger = sim.ledger
    replays = sim.idempotency.counts
    return {
        "requests": requests,
        "requests_total": sum(sim.counts.values()),
        "rate_limited": sim.limits.stats(),
        "charges": {
            "total": len(ledger.charges),
            "by_outcome": dict(sorted(sim.endpoints.outcomes.items())),
        },
        "payment_intents": sim.intents.stats(),
        "events": {
            "total": len(sim.events.log),
            "by_type": dict(sorted(sim.events.by_type.items())),
        },
        "webhooks": sim.webhooks.stats(),
        "ledger": {
            "charges": len(ledger.charges),
            "tokens": len(ledger.tokens),
            "refunds": len(ledger.refunds),
            "payment_methods": len(ledger.payment_methods),
            "payment_intents": len(ledger.payment_intents),
            "idempotency_keys": len(sim.idempotency.store),
        },
        "injected_errors": sim.faults.injected["injected_errors"],
        "dropped_connections": sim.faults.injected["dropped_connections"],
        "idempotent_replays": replays["idempotent_replays"],
        "idempotency_conflicts": replays["idempotency_conflicts"],
        "idempotency_mismatches": replays["idempotency_mismatches"],
        "in_flight": sim.limits.in_flight,
        "latency_added_ms": sim.faults.latency_added(),
        "config": sim.config.as_dict(),
        "uptime_s": round(time.time() - sim.started, 3),
    }
