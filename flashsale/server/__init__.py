"""The checkout server: create_app(settings), imported lazily.

Importing this package stays light (no flask, redis or ssl) so gunicorn's master can load
flashsale.server.gunicorn_conf before each worker patches gevent and builds the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from flashsale.settings import Settings


def create_app(settings: Settings, async_mode: str = "gevent") -> Flask:
    """Build the app (see flashsale.server.app.create_app)."""
    from flashsale.server.app import create_app as build

    return build(settings, async_mode)
