"""WSGI entry for gunicorn and PaaS: `gunicorn -c python:flashsale.server.gunicorn_conf
flashsale.server.wsgi:app`; settings come from the environment (Settings.from_env)."""

from __future__ import annotations

# gevent must own the process's I/O before flask, redis or celery import socket or threading.
# gunicorn's gevent worker has patched already; this covers --preload and other servers.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from flashsale.errors import ConfigError  # noqa: E402
from flashsale.server.serving import load_app  # noqa: E402
from flashsale.settings import Settings  # noqa: E402

settings = Settings.from_env(os.environ).checked()
if not settings.secret:
    # This entry serves whatever gunicorn binds (the Procfile: 0.0.0.0): never on a made-up or
    # a public secret.
    raise ConfigError(
        "FLASHSALE_SECRET is not set: the gunicorn entry needs it (it signs room tokens and "
        "/notify; server processes and workers must share it)"
    )
settings, _ = settings.with_served_secret("0.0.0.0")
app = load_app(settings)
