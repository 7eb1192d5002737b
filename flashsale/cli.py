"""The flashsale command line: each command parses flags, builds Settings, makes one call."""

from __future__ import annotations

import os
from typing import Any

import click

from flashsale import __version__
from flashsale.errors import FlashsaleError
from flashsale.settings import Settings


class FlashsaleGroup(click.Group):
    """The one place that turns our errors into a clear line and an exit code, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlashsaleError as error:
            exc = click.ClickException(str(error))
            exc.exit_code = error.exit_code
            raise exc from None


def load_settings(**overrides: object) -> Settings:
    """Environment first, flags on top, then refuse anything unsafe."""
    return Settings.from_env(os.environ).replace(**overrides).checked()


@click.group(cls=FlashsaleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flashsale")
def cli() -> None:
    """Rehearse flash sales against an asynchronous Stripe charge pipeline.

    Start with `flashsale rehearse`: it runs the whole pipeline on this machine,
    sends a flash sale at it, reconciles every order and says whether it held.
    """


allow_live_option = click.option(
    "--allow-live-stripe",
    is_flag=True,
    default=None,
    help="Accept a sk_live_/rk_live_ key. Without it a live key is refused.",
)


@cli.command("stripe-sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=12111, show_default=True, type=int, help="Port to bind (0 = pick a free one)."
)
@click.option(
    "--rate-limit",
    default="off",
    show_default=True,
    help="Requests per second before 429: 'test' (25/s), 'live' (100/s), 'off' or a number.",
)
@click.option(
    "--concurrency-limit",
    default=0,
    show_default=True,
    type=int,
    help="Requests in flight before 429 (0 = unlimited).",
)
@click.option(
    "--latency",
    default="0",
    show_default=True,
    help="Added latency per request: '200ms', '0.2s', or 'lognormal:p50=80ms,p99=600ms'.",
)
@click.option(
    "--error-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fraction of requests answered 500 api_error (Stripe-Should-Retry: true).",
)
@click.option(
    "--drop-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fraction of charges committed but answered by a dropped connection.",
)
@click.option(
    "--idempotency-ttl",
    default=86400,
    show_default=True,
    type=int,
    help="Seconds an Idempotency-Key is remembered.",
)
def stripe_sim(
    host: str,
    port: int,
    rate_limit: str,
    concurrency_limit: int,
    latency: str,
    error_rate: float,
    drop_rate: float,
    idempotency_ttl: int,
) -> None:
    """Run a Stripe-compatible simulator for offline rehearsals."""
    from flashsale.stripe_sim import SimConfig, run

    config = SimConfig.from_options(
        rate_limit=rate_limit,
        concurrency_limit=concurrency_limit,
        latency=latency,
        error_rate=error_rate,
        drop_rate=drop_rate,
        idempotency_ttl_s=idempotency_ttl,
    )
    run(host=host, port=port, config=config)


def main() -> None:
    cli(prog_name="flashsale")
