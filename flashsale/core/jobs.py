"""Names of the Celery queue and tasks that the server (producer) and worker (consumer) share."""

from __future__ import annotations

QUEUE = "flashsale.charges"
# process_response has a queue of its own, which workers consume beside QUEUE: on the charges
# queue it waited behind every charge still to make, so in a 2,000-order burst customers heard
# almost nothing until the backlog was charged (benchmarks/stripe_budget.py, finals per second).
RESULTS_QUEUE = "flashsale.results"
CREATE_CHARGE = "flashsale.create_charge"
PROCESS_RESPONSE = "flashsale.process_response"
