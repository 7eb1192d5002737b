"""Entry for `celery -A flashsale.worker.celery_app worker -P threads -E` (the original style)."""

from __future__ import annotations

import os

from flashsale.settings import Settings
from flashsale.worker.app import create_celery

app = create_celery(Settings.from_env(os.environ).checked())
