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


def pipeline_options(command: Any) -> Any:
    """Flags serve and worker share; unset ones fall back to the environment (Settings.from_env)."""
    options = [
        click.option("--redis-url", default=None, help="Redis URL (env FLASHSALE_REDIS_URL)."),
        click.option(
            "--stripe-api-base",
            default=None,
            help="The simulator's URL or https://api.stripe.com (env STRIPE_API_BASE).",
        ),
        click.option(
            "--notify",
            type=click.Choice(["queue", "http"]),
            default=None,
            help="Deliver results via the Redis message queue (default) or the HTTP /notify hop.",
        ),
        allow_live_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=5000, show_default=True, type=int, help="Port to bind (0 = pick a free one)."
)
@click.option(
    "--stock", type=click.IntRange(min=0), default=None, help="Units for sale (set once)."
)
@click.option("--price", type=click.IntRange(min=1), default=None, help="Unit price, minor units.")
@click.option("--currency", default=None, help="ISO currency code, e.g. usd.")
@click.option("--sku", default=None, help="SKU of the item on sale.")
@click.option("--name", default=None, help="Name of the item on sale.")
@click.option("--max-quantity", type=int, default=None, help="Most units one order may take.")
@click.option("--access-log", is_flag=True, help="Log every HTTP request.")
@pipeline_options
def serve(
    host: str,
    port: int,
    stock: int | None,
    price: int | None,
    currency: str | None,
    sku: str | None,
    name: str | None,
    max_quantity: int | None,
    access_log: bool,
    redis_url: str | None,
    stripe_api_base: str | None,
    notify: str | None,
    allow_live_stripe: bool | None,
) -> None:
    """Serve the checkout page, the charge API and Socket.IO rooms (Flask-SocketIO, gevent)."""
    # Before flask, redis or socket are used: gevent must own the process's I/O. Done here, not
    # at import, because other commands (the simulator, loadgen) run asyncio.
    from gevent import monkey

    monkey.patch_all()
    settings = load_settings(
        redis_url=redis_url,
        stripe_api_base=stripe_api_base.rstrip("/") if stripe_api_base else None,
        notify=notify,
        allow_live_stripe=allow_live_stripe,
        sale_stock=stock,
        sale_price=price,
        sale_currency=currency.lower() if currency else None,
        sale_sku=sku,
        sale_name=name,
        max_quantity=max_quantity,
    )
    from flashsale.server.serving import serve as run_server

    run_server(settings, host, port, access_log=access_log)


@cli.command("worker")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--server-url", default=None, help="Where --notify http POSTs /notify.")
@click.option("--max-retries", type=click.IntRange(min=0), default=None, help="Charge retries.")
@click.option("--stripe-timeout", type=float, default=None, help="Seconds per Stripe request.")
@click.option(
    "--retry-backoff-max", type=float, default=None, help="Longest wait between retries (s)."
)
@click.option(
    "--visibility-timeout",
    type=int,
    default=None,
    help="Seconds before an unacknowledged task is redelivered (after a worker dies).",
)
@click.option("--loglevel", default="INFO", show_default=True)
@pipeline_options
def worker(
    concurrency: int,
    server_url: str | None,
    max_retries: int | None,
    stripe_timeout: float | None,
    retry_backoff_max: float | None,
    visibility_timeout: int | None,
    loglevel: str,
    redis_url: str | None,
    stripe_api_base: str | None,
    notify: str | None,
    allow_live_stripe: bool | None,
) -> None:
    """Run the Celery worker that charges orders at Stripe and delivers the results."""
    settings = load_settings(
        redis_url=redis_url,
        stripe_api_base=stripe_api_base.rstrip("/") if stripe_api_base else None,
        notify=notify,
        allow_live_stripe=allow_live_stripe,
        server_url=server_url,
        charge_max_retries=max_retries,
        stripe_timeout_s=stripe_timeout,
        retry_backoff_max_s=retry_backoff_max,
        visibility_timeout_s=visibility_timeout,
    )
    from flashsale.worker import run_worker

    run_worker(settings, concurrency, loglevel=loglevel.upper())


@cli.command("loadgen")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="The sale.")
@click.option("--customers", type=int, default=None, help="Customers to play (a bound).")
@click.option("--duration", default=None, help="Stop arrivals after this long, e.g. 60s (a bound).")
@click.option("--rate", default=None, help="Open model: constant arrivals, e.g. 200/s [50/s].")
@click.option("--ramp", default=None, help="Open model: linear ramp START:END:DURATION.")
@click.option("--poisson", is_flag=True, help="Poisson arrivals at the --rate/--ramp intensity.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --poisson.")
@click.option(
    "--doors-open",
    is_flag=True,
    help="Flash sale: all customers load, connect and join, then submit at one instant.",
)
@click.option("--concurrency", type=int, default=None, help="Closed model: N customers looping.")
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on customers in flight (like wrk2 connections); late starts show as schedule lag.",
)
@click.option("--cards", default=None, help="Test-card mix, e.g. visa=85,insufficient_funds=5.")
@click.option(
    "--tokenize",
    type=click.Choice(["raw", "test-tokens"]),
    default="raw",
    show_default=True,
    help="Send raw test card numbers to /v1/tokens, or use tok_ test tokens.",
)
@click.option("--timeout", default="30s", show_default=True, help="Wait per phase and for results.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="JSON report.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Offline HTML report.")
@click.option("--slo", "slos", multiple=True, help="Objective, e.g. 'e2e.p99<2s' (repeatable).")
@click.option("--redis-url", default=None, help="Pipeline Redis for the system panel.")
@click.option("--stock-key", default=None, help="Redis key of stock left [flashsale:stock:SKU].")
@click.option("--no-dashboard", is_flag=True, help="Print a status line every few seconds.")
@click.option("--interval", default="1s", show_default=True, help="Time-series resolution.")
@click.option(
    "--max-lag",
    default="100ms",
    show_default=True,
    help="Generator lag (p99) above which the run is invalid (exit 3).",
)
@click.option(
    "--max-cpu",
    type=float,
    default=90.0,
    show_default=True,
    help="Generator CPU %% above which the run is invalid (exit 3).",
)
@click.option("--no-fallback", is_flag=True, help="Do not GET /orders/<id> after a dropped socket.")
def loadgen(
    url: str,
    customers: int | None,
    duration: str | None,
    rate: str | None,
    ramp: str | None,
    poisson: bool,
    seed: int,
    doors_open: bool,
    concurrency: int | None,
    max_in_flight: int | None,
    cards: str | None,
    tokenize: str,
    timeout: str,
    report_path: str | None,
    html_path: str | None,
    slos: tuple[str, ...],
    redis_url: str | None,
    stock_key: str | None,
    no_dashboard: bool,
    interval: str,
    max_lag: str,
    max_cpu: float,
    no_fallback: bool,
) -> None:
    """Play simulated customers through the sale and measure every phase.

    Exit codes: 0 all SLOs met, 1 an SLO failed, 2 usage or setup error,
    3 the run is invalid because the generator itself saturated.
    """
    from pathlib import Path

    from flashsale.loadgen import runner, scenario, stats

    config = runner.LoadConfig(
        url=url.rstrip("/"),
        schedule=scenario.build_schedule(
            rate=rate,
            ramp=ramp,
            poisson=poisson,
            seed=seed,
            doors_open=doors_open,
            concurrency=concurrency,
            customers=customers,
            duration=duration,
        ),
        cards=scenario.parse_cards(cards or scenario.DEFAULT_CARDS, tokenize),
        tokenize=tokenize,
        timeout_s=scenario.parse_duration(timeout, what="--timeout"),
        max_in_flight=max_in_flight,
        slos=[stats.parse_slo(text) for text in slos],
        report_path=Path(report_path) if report_path else None,
        html_path=Path(html_path) if html_path else None,
        dashboard=not no_dashboard,
        redis_url=redis_url,
        stock_key=stock_key,
        interval_s=scenario.parse_duration(interval, what="--interval"),
        max_lag_s=scenario.parse_duration(max_lag, default_unit="ms", what="--max-lag"),
        max_cpu_percent=max_cpu,
        fallback=not no_fallback,
    )
    result = runner.run(config)
    click.get_current_context().exit(result.exit_code)


def main() -> None:
    cli(prog_name="flashsale")
