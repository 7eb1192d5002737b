"""Names of the Celery queue and tasks that the server (producer) and worker (consumer) share."""

from __future__ import annotations

QUEUE = "flashsale.charges"
CREATE_CHARGE = "flashsale.create_charge"
PROCESS_RESPONSE = "flashsale.process_response"
