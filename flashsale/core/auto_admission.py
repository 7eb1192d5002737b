"""`--admit-rate auto`: admit as fast as the Stripe budget and the pipeline can take, no faster.

A fixed rate is a guess made before the sale. This one is measured during it, once a second,
from what every server process already shares in Redis (core.orders' counts per sale, the
room's counts):

- the Stripe budget: charges per second the workers may send (core.rate_budget), at most
  BUDGET_SHARE of Stripe's limit, divided by the charges one admitted customer causes (more
  than one when declined customers retry, fewer when admitted customers leave);
- the pipeline: while more orders wait for an answer than it finishes in BACKLOG_S, admission
  drops to what it finishes (the queue then stays in the waiting room, where customers see
  their place, not in the broker, where they see a spinner), less by at most BACKOFF a second;
  otherwise it grows by GROWTH a second back towards the budget.

Pure: the caller reads the counts and writes the rate (server.waiting_room).
"""

from __future__ import annotations

from dataclasses import dataclass

# Stripe's limit is shared with the workers' retries and the account's other traffic.
BUDGET_SHARE = 0.95
BACKLOG_S = 1.0  # orders waiting longer than this means the pipeline is behind
GROWTH = 1.25  # per second, while the pipeline keeps up
BACKOFF = 0.8  # the most one second behind takes off the rate
MIN_RATE = 1.0  # never stop: a stalled pipeline still finishes something
START_RATE = 20.0  # without a Stripe limit to start from
MAX_RATE = 1000.0  # without a Stripe limit to stop at
SMOOTHING = 0.5  # weight of the newest second in the measured finish rate
MEASURED_AFTER = 20  # admitted customers before their charges per admission are trusted


@dataclass(frozen=True)
class Reading:
    """What the sale's counters say at `at_s` (seconds on any one monotonic clock)."""

    at_s: float
    admitted: int  # by the room, ever
    holding: int  # admitted, with no order at Stripe yet
    placed: int  # orders, every state
    pending: int  # orders waiting for Stripe's answer


class AutoAdmission:
    """The admission rate for the next second, from one reading a second."""

    def __init__(self, stripe_budget: float | None) -> None:
        self.budget = stripe_budget  # charges/s; None when no Stripe limit is known
        self.rate = stripe_budget or START_RATE  # corrected after the first second
        self.finish_rate = 0.0  # orders answered per second, smoothed
        self.last: Reading | None = None

    def charges_per_admission(self, reading: Reading) -> float:
        """Orders per admitted customer who is done choosing (holding: not yet)."""
        decided = reading.admitted - reading.holding
        if decided < MEASURED_AFTER:
            return 1.0
        return min(4.0, max(0.25, reading.placed / decided))

    def update(self, reading: Reading) -> float:
        last, self.last = self.last, reading
        if last is not None and reading.at_s > last.at_s:
            finished = (reading.placed - reading.pending) - (last.placed - last.pending)
            measured = max(0, finished) / (reading.at_s - last.at_s)
            self.finish_rate += SMOOTHING * (measured - self.finish_rate)
        per_admission = self.charges_per_admission(reading)
        ceiling = self.budget / per_admission if self.budget else MAX_RATE
        if last is not None and reading.pending > max(self.finish_rate, 1.0) * BACKLOG_S:
            # Behind: back to what the pipeline finishes, but a burst of orders (customers do
            # not pay at the pace they were admitted) costs at most BACKOFF of the rate.
            self.rate = max(self.finish_rate / per_admission, self.rate * BACKOFF)
        else:
            self.rate *= GROWTH
        self.rate = min(ceiling, max(MIN_RATE, self.rate))
        return self.rate
