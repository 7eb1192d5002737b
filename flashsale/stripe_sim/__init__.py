"""Stripe-compatible simulator for rehearsals: tokens, charges, idempotency, limits, faults."""

from __future__ import annotations

from flashsale.stripe_sim.config import SimConfig
from flashsale.stripe_sim.server import Simulator, run, serve

__all__ = ["SimConfig", "Simulator", "run", "serve"]
