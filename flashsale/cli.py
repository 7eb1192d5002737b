"""The flashsale command line: each command parses flags, builds Settings, makes one call."""

from __future__ import annotations

import os
from typing import Any

import click

from flashsale import __version__
from flashsale.errors import ConfigError, FlashsaleError
from flashsale.settings import MAX_IN_FLIGHT, Settings, room_overrides
from flashsale.units import parse_duration


class FlashsaleClickError(click.ClickException):
    """One of our errors: one line on stderr, and the error's own exit code (2 for a
    configuration mistake, like a usage error; 4 when output could not be written)."""

    def __init__(self, error: FlashsaleError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code  # type: ignore[misc]  # click reads it per instance


class FlashsaleGroup(click.Group):
    """The one place that turns our errors into a clear line and an exit code, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlashsaleError as error:
            raise FlashsaleClickError(error) from None


# The settings' defaults, quoted in the help of flags that fall back to the environment.
DEFAULTS = Settings()


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


def _chaos_help() -> str:
    from flashsale.ops.faults import SPEC_HELP

    return SPEC_HELP + ' Also [pipeline] chaos = "SPEC" in a scenario.'


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
    "--endpoint-rate-limit",
    default="auto",
    show_default=True,
    help="Requests per second per named operation (POST /v1/payment_intents, ...) before 429 "
    "endpoint-rate: 'stripe' (the documented 25/s), 'off', a number, or 'auto': Stripe's 25/s "
    "with --rate-limit test or live (the docs' limits), off otherwise.",
)
@click.option(
    "--endpoint-concurrency-limit",
    default=0,
    show_default=True,
    type=int,
    help="Requests in flight per named operation before 429 (0 = unlimited).",
)
@click.option(
    "--latency",
    default="0",
    show_default=True,
    help="Added latency per request: '200ms', '0.2s', or 'lognormal:p50=80ms,p99=600ms' "
    "(sampled per request); a duration always carries its unit.",
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
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    metavar="URL",
    help="Deliver every event, signed, to this loopback URL (repeatable), e.g. "
    "http://127.0.0.1:5000/stripe/webhook.",
)
@click.option(
    "--webhook-secret",
    default=None,
    help="The whsec_ secret deliveries are signed with [default: generated and printed].",
)
@click.option(
    "--webhook-latency",
    default="0",
    show_default=True,
    help="Delay before each webhook delivery: '500ms' or 'lognormal:p50=200ms,p99=3s'.",
)
@click.option(
    "--webhook-drop-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fraction of events never delivered to webhooks (they stay in /v1/events).",
)
@click.option(
    "--webhook-duplicate-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fraction of events delivered twice.",
)
@click.option(
    "--webhook-out-of-order-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fraction of events held back 1 s so later events overtake them.",
)
@click.option(
    "--allow-raw-cards",
    is_flag=True,
    help="Accept raw card numbers from secret keys, as an account with raw card data APIs "
    "enabled does. Without it only the publishable key (Stripe.js) may send them; server-side "
    "code must use tokens, PaymentMethods or test aliases (tok_visa, pm_card_visa).",
)
@click.option(
    "--restricted-key",
    "restricted_keys",
    multiple=True,
    metavar="KEY=PERMISSIONS",
    help="A restricted key and what it may do, e.g. "
    "rk_test_worker=charge_write,payment_intent_write (repeatable; write allows read); a call "
    "outside them is 403 as on Stripe. An rk_test_ key not named here may do everything.",
)
def stripe_sim(
    host: str,
    port: int,
    rate_limit: str,
    concurrency_limit: int,
    endpoint_rate_limit: str,
    endpoint_concurrency_limit: int,
    latency: str,
    error_rate: float,
    drop_rate: float,
    idempotency_ttl: int,
    webhooks: tuple[str, ...],
    webhook_secret: str | None,
    webhook_latency: str,
    webhook_drop_rate: float,
    webhook_duplicate_rate: float,
    webhook_out_of_order_rate: float,
    allow_raw_cards: bool,
    restricted_keys: tuple[str, ...],
) -> None:
    """Run a Stripe-compatible simulator for offline rehearsals: Tokens, Charges, Refunds,
    PaymentMethods, PaymentIntents with 3D Secure, Events and signed webhooks."""
    from flashsale.stripe_sim import SimConfig, run
    from flashsale.stripe_sim.scopes import parse_restricted_keys
    from flashsale.stripe_sim.webhooks import SECRET_PREFIX, check_url

    config = SimConfig.from_options(
        rate_limit=rate_limit,
        concurrency_limit=concurrency_limit,
        endpoint_rate_limit=endpoint_rate_limit,
        endpoint_concurrency_limit=endpoint_concurrency_limit,
        latency=latency,
        error_rate=error_rate,
        drop_rate=drop_rate,
        idempotency_ttl_s=idempotency_ttl,
        webhook_latency=webhook_latency,
        webhook_drop_rate=webhook_drop_rate,
        webhook_duplicate_rate=webhook_duplicate_rate,
        webhook_out_of_order_rate=webhook_out_of_order_rate,
        allow_raw_cards=allow_raw_cards,
    )
    for url in webhooks:
        check_url(url)
    if webhook_secret is not None and not webhook_secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"--webhook-secret must start with {SECRET_PREFIX}")
    run(
        host=host,
        port=port,
        config=config,
        webhooks=webhooks,
        webhook_secret=webhook_secret,
        restricted_keys=parse_restricted_keys(restricted_keys),
    )


def pipeline_settings(
    redis_url: str | None,
    stripe_api_base: str | None,
    notify: str | None,
    allow_live_stripe: bool | None,
    **overrides: object,
) -> Settings:
    """Settings for serve and worker from their shared flags (pipeline_options) plus their own."""
    return load_settings(
        redis_url=redis_url,
        stripe_api_base=stripe_api_base.rstrip("/") if stripe_api_base else None,
        notify=notify,
        allow_live_stripe=allow_live_stripe,
        **overrides,
    )


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


def _read_timeout_default(field: str) -> str:
    from flashsale.server.slow_clients import ReadTimeouts

    return ReadTimeouts.default_of(field)


def room_options(command: Any) -> Any:
    """The waiting room's flags, shared by serve and rehearse."""
    room = Settings()
    for option in reversed(
        (
            click.option(
                "--waiting-room",
                type=click.Choice(["on", "off"]),
                default=None,
                help="A virtual waiting room in front of checkout: /session hands out queue "
                "tickets, customers are admitted by the rules below and hold a unit while "
                "they pay; POST /charges needs an admission token [off; env "
                "FLASHSALE_WAITING_ROOM].",
            ),
            click.option(
                "--admit-rate",
                default=None,
                help="Customers admitted a second, all server processes together; 0 = no rate "
                "bound; 'auto' = as fast as the Stripe budget (0.95 of --stripe-limit, charges "
                "per admitted customer measured) and the pipeline's measured finish rate allow, "
                f"retuned every second [{room.room_rate:g}/s].",
            ),
            click.option(
                "--admit-cap",
                type=click.IntRange(min=0),
                default=None,
                help="Most customers holding a unit at once: one is admitted as one finishes "
                f"(0 = no cap) [{room.room_cap}].",
            ),
            click.option(
                "--hold",
                default=None,
                help=f"How long an admitted customer's unit is theirs [{room.room_hold_s:g}s].",
            ),
            click.option(
                "--retry-window",
                default=None,
                help="After a decline, how long the unit stays the customer's to pay with "
                f"another card (0 = none) [{room.room_retry_s:g}s].",
            ),
            click.option(
                "--room-grace",
                default=None,
                help="A customer whose socket is gone this long leaves the queue or gives "
                f"their unit back [{room.room_grace_s:g}s].",
            ),
            click.option(
                "--room-doors",
                type=click.Choice(["open", "closed"]),
                default=None,
                help="closed: customers queue and nobody is admitted until `flashsale "
                f"open-doors` (rehearse opens them with loadgen's doors) [{room.room_doors}].",
            ),
            click.option(
                "--room-order",
                type=click.Choice(["fifo", "shuffle"]),
                default=None,
                help="shuffle: the customers queued before the doors open are admitted in a "
                "random order, so nobody gains by arriving early; later arrivals queue "
                f"behind them [{room.room_order}].",
            ),
        )
    ):
        command = option(command)
    return command


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=5000, show_default=True, type=int, help="Port to bind (0 = pick a free one)."
)
@click.option(
    "--stock",
    type=click.IntRange(min=0),
    help=f"Units for sale, set once per SKU [{DEFAULTS.sale_stock}; env FLASHSALE_STOCK].",
)
@click.option(
    "--price",
    type=click.IntRange(min=1),
    help=f"Unit price in minor units (cents) [{DEFAULTS.sale_price}; env FLASHSALE_PRICE].",
)
@click.option(
    "--currency", help=f"ISO currency code [{DEFAULTS.sale_currency}; env FLASHSALE_CURRENCY]."
)
@click.option("--sku", help=f"SKU of the item on sale [{DEFAULTS.sale_sku}; env FLASHSALE_SKU].")
@click.option(
    "--name", help=f"Name of the item on sale [{DEFAULTS.sale_name}; env FLASHSALE_NAME]."
)
@click.option(
    "--max-quantity",
    type=click.IntRange(1, 100),
    help=f"Most units one order may take [{DEFAULTS.max_quantity}].",
)
@click.option(
    "--stock-from-ledger/--ignore-ledger",
    default=None,
    help="When Redis has no stock for the SKU, open the sale net of the units Stripe's ledger "
    "already charged for it (Redis lost its data); --ignore-ledger opens a fresh sale of a "
    "SKU that sold before [stock-from-ledger; env FLASHSALE_STOCK_FROM_LEDGER=0 ignores].",
)
@click.option("--access-log", is_flag=True, help="Log every HTTP request.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes behind the one port (more than 1: gunicorn, gevent websocket worker).",
)
@click.option(
    "--header-timeout",
    help="Longest a client may take to send a request's line and headers, from its connect "
    "(on a kept-alive connection: from the request's first byte); then it is closed, with a "
    f"408 if it began one [{_read_timeout_default('header_s')}; env FLASHSALE_HEADER_TIMEOUT; "
    "0 = no limit].",
)
@click.option(
    "--body-timeout",
    help="Longest a client may take to send a request's body, from the end of its headers; "
    f"then 408 and closed [{_read_timeout_default('body_s')}; env FLASHSALE_BODY_TIMEOUT; "
    "0 = no limit].",
)
@click.option(
    "--keepalive-timeout",
    help="Longest a kept-alive connection may sit idle between requests before it is closed; "
    "open websockets are never cut "
    f"[{_read_timeout_default('keepalive_s')}; env FLASHSALE_KEEPALIVE_TIMEOUT; 0 = no limit].",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, MAX_IN_FLIGHT),
    default=None,
    help="HTTP requests one server process works on at once; the rest wait their turn "
    f"[{Settings().max_in_flight}; env FLASHSALE_MAX_IN_FLIGHT].",
)
@click.option(
    "--queue-wait",
    default=None,
    help="Longest a request waits for its turn, then 503 with Retry-After, counted in "
    f"flashsale_http_shed_total [{Settings().queue_wait_s:g}s; env FLASHSALE_QUEUE_WAIT].",
)
@click.option(
    "--ping-interval",
    default=None,
    help="How often the server pings each websocket, in whole seconds; a client that does not "
    "answer within engine.io's ping timeout (20s) is dropped "
    f"[{Settings().ping_interval_s:g}s; env FLASHSALE_PING_INTERVAL].",
)
@click.option(
    "--payments",
    type=click.Choice(["charges", "intents"]),
    default=None,
    help="What the checkout page (and the load generator) make of the card, told in /session: "
    "'intents', a PaymentMethod the worker pays with one PaymentIntent (Stripe's recommended "
    "integration; give STRIPE_WEBHOOK_SECRET for /stripe/webhook); 'charges', a token the "
    "worker charges with the Charges API. Orders carrying either are paid either way "
    "[intents; env FLASHSALE_PAYMENTS].",
)
@room_options
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
    stock_from_ledger: bool | None,
    access_log: bool,
    workers: int,
    header_timeout: str | None,
    body_timeout: str | None,
    keepalive_timeout: str | None,
    max_in_flight: int | None,
    queue_wait: str | None,
    ping_interval: str | None,
    payments: str | None,
    waiting_room: str | None,
    admit_rate: str | None,
    admit_cap: int | None,
    hold: str | None,
    retry_window: str | None,
    room_grace: str | None,
    room_doors: str | None,
    room_order: str | None,
    redis_url: str | None,
    stripe_api_base: str | None,
    notify: str | None,
    allow_live_stripe: bool | None,
) -> None:
    """Serve the checkout page, the charge API and Socket.IO rooms (Flask-SocketIO, gevent).

    Durations carry their unit (500ms, 10s, 1m). A client slow to send a request, or idle on a
    kept-alive connection, is closed after the timeouts below, in either serving mode.
    """
    from flashsale.server.slow_clients import ReadTimeouts

    timeouts = ReadTimeouts.from_options(
        header_s=header_timeout, body_s=body_timeout, keepalive_s=keepalive_timeout
    )
    settings = pipeline_settings(
        redis_url,
        stripe_api_base,
        notify,
        allow_live_stripe,
        sale_stock=stock,
        sale_price=price,
        sale_currency=currency.lower() if currency else None,
        sale_sku=sku,
        sale_name=name,
        max_quantity=max_quantity,
        stock_from_ledger=stock_from_ledger,
        max_in_flight=max_in_flight,
        queue_wait_s=parse_duration(queue_wait, "--queue-wait") if queue_wait else None,
        ping_interval_s=parse_duration(ping_interval, "--ping-interval") if ping_interval else None,
        payments=payments,
        **room_overrides(
            waiting_room,
            admit_rate,
            admit_cap,
            hold,
            retry_window,
            room_grace,
            room_doors,
            room_order,
        ),
    )
    settings, note = settings.with_served_secret(host)
    if note:
        click.echo(f"flashsale serve: {note}", err=True)
    if settings.payments == "intents" and not settings.stripe_webhook_secret:
        click.echo(
            "flashsale serve: no STRIPE_WEBHOOK_SECRET: /stripe/webhook answers 503, so orders "
            "waiting for 3D Secure finish only when the workers' sweeper reads their "
            "PaymentIntent (--sweep-after); give the whsec_ secret of your webhook endpoint",
            err=True,
        )
    if workers > 1:
        # gunicorn's master stays unpatched; each worker patches gevent before building the app.
        from flashsale.server.serving import serve_workers

        serve_workers(settings, host, port, workers, access_log=access_log, timeouts=timeouts)
        return
    # Before flask, redis or socket are used: gevent must own the process's I/O. Done here, not
    # at import, because other commands (the simulator, loadgen) run asyncio.
    from gevent import monkey

    monkey.patch_all()
    from flashsale.server.serving import serve as run_server

    run_server(settings, host, port, access_log=access_log, timeouts=timeouts)


@cli.command("worker")
@click.option(
    "--concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Threads charging at once in this worker process (Stripe calls are I/O).",
)
@click.option(
    "--server-url",
    help=f"Where --notify http POSTs /notify [{DEFAULTS.server_url}; env FLASHSALE_SERVER_URL].",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    help=f"Tries again of a Stripe call that failed for a reason worth retrying (429, 5xx, "
    f"network) before the order fails [{DEFAULTS.charge_max_retries}].",
)
@click.option(
    "--stripe-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help=f"Seconds per Stripe request [{DEFAULTS.stripe_timeout_s:g}].",
)
@click.option(
    "--retry-backoff-max",
    type=click.FloatRange(min=0),
    help=f"Longest wait between retries, seconds [{DEFAULTS.retry_backoff_max_s:g}].",
)
@click.option(
    "--visibility-timeout",
    type=click.IntRange(min=1),
    help="Seconds before an unacknowledged task is redelivered (after a worker dies) "
    f"[{DEFAULTS.visibility_timeout_s}].",
)
@click.option(
    "--stripe-rate",
    default=None,
    help="Stripe requests/s shared by all workers on this Redis: 'auto' (90% of --stripe-limit "
    "against Stripe, 99% against a simulator), 'off', or a number [auto; env "
    "FLASHSALE_STRIPE_RATE].",
)
@click.option(
    "--stripe-limit",
    default=None,
    help="The request limit of the Stripe the workers talk to: 'test' (25/s), 'live' (100/s), "
    "'off' or a number; a simulator's is its --rate-limit [the key's mode against Stripe, none "
    "for a simulator; env FLASHSALE_STRIPE_LIMIT].",
)
@click.option(
    "--stripe-endpoint-limit",
    default=None,
    help="The limit of one operation (the workers repeat POST /v1/charges): 'stripe' (Stripe's "
    "default 25/s per endpoint), 'off', a number (a limit Stripe raised for this account), or "
    "'auto': 25/s when --stripe-limit is test or live; 'auto' takes its share of the lower of "
    "the two [auto; env FLASHSALE_STRIPE_ENDPOINT_LIMIT].",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Celery task events and heartbeats (-E, for Flower and `celery events`), sent in "
    "100 ms batches; --no-events saves ~2% of the worker's CPU per order.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Exit (code 3) when charges wait in the queue but this worker started none for this "
    "long, so its supervisor restarts it (Celery can reconnect without consuming); 0 = off.",
)
@click.option(
    "--authentication-timeout",
    default=None,
    help="How long a customer has to finish 3D Secure; then the PaymentIntent is canceled and "
    f"the unit goes back on sale [{Settings().authentication_timeout_s:g}s; env "
    "FLASHSALE_AUTHENTICATION_TIMEOUT].",
)
@click.option(
    "--sweep-after",
    type=click.FloatRange(min=0),
    default=None,
    help="Re-queue orders still pending after this many seconds (placed but never queued: "
    "Redis or the server failed in between); safe, the charge is idempotent "
    "[the visibility timeout; 0 = off].",
)
@click.option(
    "--loglevel",
    default="INFO",
    show_default=True,
    help="DEBUG adds Celery's per-task lines and stripe's request lines.",
)
@pipeline_options
def worker(
    concurrency: int,
    server_url: str | None,
    max_retries: int | None,
    stripe_timeout: float | None,
    retry_backoff_max: float | None,
    visibility_timeout: int | None,
    stripe_rate: str | None,
    stripe_limit: str | None,
    stripe_endpoint_limit: str | None,
    authentication_timeout: str | None,
    events: bool,
    stall_timeout: float,
    sweep_after: float | None,
    loglevel: str,
    redis_url: str | None,
    stripe_api_base: str | None,
    notify: str | None,
    allow_live_stripe: bool | None,
) -> None:
    """Run the Celery worker that charges orders at Stripe and delivers the results."""
    settings = pipeline_settings(
        redis_url,
        stripe_api_base,
        notify,
        allow_live_stripe,
        server_url=server_url,
        charge_max_retries=max_retries,
        stripe_timeout_s=stripe_timeout,
        retry_backoff_max_s=retry_backoff_max,
        visibility_timeout_s=visibility_timeout,
        stripe_rate=stripe_rate,
        stripe_limit=stripe_limit,
        stripe_endpoint_limit=stripe_endpoint_limit,
        authentication_timeout_s=parse_duration(authentication_timeout, "--authentication-timeout")
        if authentication_timeout
        else None,
    )
    from flashsale.worker.main import run_worker

    run_worker(
        settings,
        concurrency,
        loglevel=loglevel.upper(),
        events=events,
        stall_timeout_s=stall_timeout,
        sweep_after_s=sweep_after,
    )


@cli.command("loadgen")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="The sale.")
@click.option("--customers", type=click.IntRange(min=1), help="Customers to play (a bound).")
@click.option("--duration", help="Stop arrivals after this long, e.g. 60s (a bound).")
@click.option("--rate", help="Open model: constant arrivals, e.g. 200/s [50/s; doors-open 100/s].")
@click.option("--ramp", help="Open model: linear ramp START:END:DURATION, e.g. 10/s:500/s:60s.")
@click.option("--poisson", is_flag=True, help="Poisson arrivals at the --rate/--ramp intensity.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --poisson.")
@click.option(
    "--doors-open",
    is_flag=True,
    help="Flash sale: all customers load, connect and join, then submit at one instant.",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Closed model: N customers looping."
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    help="Cap on customers in flight (like wrk2 connections); late starts show as schedule lag.",
)
@click.option(
    "--cards",
    help="Test-card mix, e.g. visa=85,insufficient_funds=5. On --payments intents the 3D "
    "Secure cards say what the customer does: three_d_secure (authenticates, paid), "
    "three_d_secure_failed (fails the challenge), three_d_secure_abandoned (leaves the page; "
    "the worker cancels after its --authentication-timeout), three_d_secure_then_declined "
    "(authenticates, then insufficient_funds) "
    "[visa=85,insufficient_funds=5,generic_decline=5,expired_card=3,incorrect_cvc=2].",
)
@click.option(
    "--tokenize",
    type=click.Choice(["auto", "raw", "test-tokens"]),
    default="auto",
    show_default=True,
    help="How customers get a card token: 'raw' sends the test card's number to /v1/tokens "
    "with the publishable key, as Stripe.js does; 'test-tokens' uses its tok_ alias (no call); "
    "'auto': raw against a simulator, test-tokens against api.stripe.com, whose test mode "
    "refuses raw numbers from anything but Stripe.js.",
)
@click.option("--timeout", default="30s", show_default=True, help="Wait per phase and for results.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--html", type=click.Path(dir_okay=False), help="Write the offline HTML report here.")
@click.option(
    "--csv",
    metavar="PREFIX",
    help="Write PREFIX_requests.csv (per endpoint), PREFIX_failures.csv and PREFIX_history.csv "
    "(the time series), as Locust's --csv does.",
)
@click.option(
    "--slo",
    multiple=True,
    help="Objective, e.g. 'e2e.p99<2s', 'server_errors.count==0' (repeatable) "
    "[without any: error.ratio<0.1% and timeout.ratio<0.1%].",
)
@click.option(
    "--no-default-slos",
    is_flag=True,
    help="Without --slo, judge nothing (the run exits 0 whatever the customers met).",
)
@click.option(
    "--abort-on-fail",
    is_flag=True,
    help="Stop the run as soon as an SLO can no longer pass (a count or maximum past its bound, "
    "a ratio failed even if every customer still to come succeeds); the report is still "
    "written and the exit code is 1.",
)
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
    help="Generator CPU percent above which the run is invalid (exit 3).",
)
@click.option(
    "--max-release-lag",
    default="10%",
    show_default=True,
    help="Doors-open: generator lag p99 from the doors opening on (each submit leaving, then "
    "the loop) above which the run is invalid (exit 3): a time, or a share of the median "
    "e2e latency it is added to.",
)
@click.option("--no-fallback", is_flag=True, help="Do not GET /orders/<id> after a dropped socket.")
@click.option(
    "--patience",
    default="lognormal:p50=10m,p99=60m",  # loadgen.scenario.DEFAULT_PATIENCE
    show_default=True,
    help="How long a customer waits in a waiting room's queue (a session that carries a "
    "ticket) before leaving, counted abandoned: a duration ('20m'), or a lognormal that each "
    "customer draws their own from. The default is an assumption, not a measurement: set "
    "yours from your own waiting room's data.",
)
@click.option(
    "--retry-after-decline",
    default="0%",
    show_default=True,
    help="Share of declined customers in a waiting room who pay again with another card "
    "while their unit is held, e.g. 50%.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Generator processes sharing the schedule [one per core]; 1 = this process only.",
)
@click.option(
    "--agents",
    type=click.IntRange(min=1),
    help="Play the scenario on N `flashsale loadgen-agent` workers instead of local processes.",
)
@click.option("--agents-redis-url", help="The Redis the agents listen on.")
@click.option(
    "--accept-timeout",
    default="30s",
    show_default=True,
    help="How long all agents (or processes) have to accept the run.",
)
@click.option(
    "--lost-after",
    default="10s",
    show_default=True,
    help="A shard silent this long is reported lost and the run is invalid.",
)
def loadgen(**options: Any) -> None:
    """Play simulated customers through the sale and measure every phase.

    Durations carry their unit (250ms, 30s, 2m); rates are per second (200/s) unless they say
    /m. The system panel reads the server's /metrics (queues, stock), never its Redis.

    Exit codes: 0 all SLOs met, 1 an SLO failed, 2 usage or setup error (including agents
    that did not accept the run), 3 the run is invalid because the generator itself
    saturated or a generator process or agent was lost, 4 a report could not be written
    (disk full; written whole or not at all, the figures are still printed). Ctrl-C stops
    every customer, still writes the report, and exits with the code of what was measured so
    far.
    """
    from flashsale.loadgen import coordinator, scenario

    result = coordinator.run(scenario.load_config(options))
    click.get_current_context().exit(result.exit_code)


@cli.group()
def report() -> None:
    """Look at loadgen reports."""


@report.command("compare")
@click.argument("base", type=click.Path(dir_okay=False, exists=True))
@click.argument("new", type=click.Path(dir_okay=False, exists=True))
def report_compare(base: str, new: str) -> None:
    """Show two loadgen JSON reports side by side with the change of every figure."""
    from pathlib import Path

    from rich.console import Console

    from flashsale.loadgen.compare import compare_view, load_report

    view = compare_view(load_report(Path(base)), load_report(Path(new)))
    Console().print(view)


@cli.command("loadgen-agent")
@click.option("--redis-url", required=True, help="The Redis `flashsale loadgen --agents` uses.")
@click.option("--name", default=None, help="Node name [loadgen-HOST-PID].")
@click.option("--loglevel", default="INFO", show_default=True, help="The agent's log level.")
def loadgen_agent(redis_url: str, name: str | None, loglevel: str) -> None:
    """A load machine's agent: a Celery worker on the `loadgen` queue playing one shard at a
    time of `flashsale loadgen --agents N` runs. Start one per load machine."""
    from flashsale.loadgen.fleet.agents import run_agent

    run_agent(redis_url, loglevel=loglevel.upper(), name=name)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--scenario",
    "scenario_path",
    type=click.Path(dir_okay=False, exists=True),
    help="A TOML scenario: [sale], [pipeline], [stripe_sim], [loadgen] (default: embedded).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Where logs and reports go [./flashsale-runs/<time>].",
)
@click.option("--customers", type=click.IntRange(min=1), help="Customers in the sale [2000].")
@click.option("--stock", type=click.IntRange(min=0), help="Units for sale [500].")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [2].")
@click.option("--worker-concurrency", type=click.IntRange(min=1), help="Threads per worker [32].")
@click.option(
    "--sim-rate-limit", help="Simulator rate limit: test, live, off or N per second [live]."
)
@click.option("--sim-latency", help="Simulator latency, e.g. 0, 200ms, lognormal:p50=..,p99=..")
@click.option("--slo", "slos", multiple=True, help="Replace the scenario's SLOs (repeatable).")
@click.option(
    "--redis-url",
    help="Use this (empty) Redis database instead of starting a private redis-server.",
)
@click.option(
    "--stripe",
    type=click.Choice(["sim", "test"]),
    default="sim",
    show_default=True,
    help="The simulator, or real Stripe test mode (needs STRIPE_* test keys).",
)
@click.option("--no-dashboard", is_flag=True, help="Print status lines instead of the live view.")
@click.option(
    "--drain-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait for pending orders to finish before reconciling.",
)
@click.option("--chaos", "chaos_spec", metavar="SPEC", help=_chaos_help())
@click.option(
    "--redis-durable",
    is_flag=True,
    default=None,
    help="Private Redis with AOF (appendfsync everysec): a Redis restart loses at most ~1 s of "
    "writes instead of the whole sale (orders, stock, queued charges).",
)
@click.option(
    "--redis-sentinel",
    is_flag=True,
    default=None,
    help="Redis as production runs it: a primary, a replica and three redis-sentinel "
    "processes (quorum 2); every component follows a failover (the failover-redis fault).",
)
@click.option(
    "--waiting-room",
    type=click.Choice(["on", "off"]),
    default=None,
    help="The waiting room in front of checkout, by the scenario's [waiting_room] rules "
    "(serve's defaults if it has none); off shows the doors-open herd without it "
    "[the scenario's: on for the embedded default].",
)
@click.option(
    "--payments",
    type=click.Choice(["charges", "intents"]),
    default=None,
    help="How customers pay: 'intents' (a PaymentMethod, one PaymentIntent confirmed by the "
    "worker, fulfilment from Stripe's signed events) or 'charges' (a token, the Charges API) "
    "[the scenario's [sale] payments; intents].",
)
@click.option(
    "--compare-waiting-room",
    is_flag=True,
    help="Rehearse the sale twice, with the waiting room and without it (each its own "
    "pipeline, in RUN_DIR/room-on and RUN_DIR/room-off), then show the figures side by side "
    "(also comparison.json and comparison.html in RUN_DIR); exits with the room's verdict.",
)
@click.argument("loadgen_args", nargs=-1, type=click.UNPROCESSED)
def rehearse(
    scenario_path: str | None,
    run_dir: str | None,
    customers: int | None,
    stock: int | None,
    workers: int | None,
    worker_concurrency: int | None,
    sim_rate_limit: str | None,
    sim_latency: str | None,
    slos: tuple[str, ...],
    redis_url: str | None,
    stripe: str,
    no_dashboard: bool,
    drain_timeout: float,
    chaos_spec: str | None,
    redis_durable: bool | None,
    redis_sentinel: bool | None,
    waiting_room: str | None,
    payments: str | None,
    compare_waiting_room: bool,
    loadgen_args: tuple[str, ...],
) -> None:
    """Run a whole flash-sale rehearsal on this machine and say whether the pipeline held.

    Starts a private Redis, the Stripe simulator, the server and workers on free loopback
    ports, sends the scenario's customers through loadgen (live dashboard), waits for every
    order to finish, reconciles orders against Stripe's ledger, prints a verdict and writes
    report.json and report.html into the run directory. Options after `--` are
    `flashsale loadgen` options and win over the scenario's, e.g.
    `flashsale rehearse -- --rate 300/s`; every option and scenario key is checked before
    anything starts.

    Exit codes: 0 SLOs met and integrity holds, 1 a check failed, 2 usage or setup error,
    3 the load generator saturated (numbers untrustworthy), 4 a report could not be written
    (disk full: the verdict is still printed; a run directory with under 1 MiB free is
    refused before anything starts), 130 interrupted.
    """
    import time
    from pathlib import Path

    from rich.console import Console

    from flashsale.ops import plan as plans
    from flashsale.ops import room_comparison
    from flashsale.ops.rehearse import Rehearsal, RehearsalResult
    from flashsale.ops.views import comparison_table, verdict_panel

    settings = load_settings()
    plan = plans.load_plan(Path(scenario_path)) if scenario_path else plans.default_plan()
    plan = plan.with_overrides(
        sale={"stock": stock, "payments": payments},
        pipeline={"workers": workers, "worker_concurrency": worker_concurrency},
        stripe_sim={"rate_limit": sim_rate_limit, "latency": sim_latency},
        loadgen={"customers": customers, "slo": list(slos) or None},
        waiting_room=None if waiting_room is None else {"enabled": waiting_room == "on"},
    )
    if compare_waiting_room and waiting_room is not None:
        raise ConfigError("--compare-waiting-room runs the room on and off: drop --waiting-room")
    directory = Path(run_dir or Path("flashsale-runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    console = Console()

    def say(text: str) -> None:
        console.print(f"[bold]rehearse[/]: {text}")

    def rehearse_one(plan: plans.RehearsalPlan, directory: Path) -> RehearsalResult:
        result = Rehearsal(
            settings,
            plan,
            directory,
            redis_url=redis_url,
            redis_durable=bool(redis_durable),
            redis_sentinel=bool(redis_sentinel),
            chaos=chaos_spec,
            stripe=stripe,
            loadgen_options=given_loadgen_options(loadgen_args),
            dashboard=not no_dashboard,
            drain_timeout_s=drain_timeout,
            say=say,
            console=console,
        ).run()
        console.print(verdict_panel(result))
        for line in result.unwritten:
            click.echo(f"flashsale rehearse: {line}", err=True)
        return result

    if not compare_waiting_room:
        click.get_current_context().exit(rehearse_one(plan, directory).process_exit_code)
    comparison = room_comparison.run_both(rehearse_one, plan, directory, say)
    console.print(comparison_table(room_comparison.figures(comparison)))
    for line in comparison.unwritten:
        click.echo(f"flashsale rehearse: {line}", err=True)
    say(f"side by side: {directory / 'comparison.html'}")
    click.get_current_context().exit(comparison.exit_code)


@cli.command()
@click.option("--redis-url", help="Redis of the sale (env FLASHSALE_REDIS_URL).")
@click.option("--stripe-api-base", help="The simulator's URL or https://api.stripe.com.")
@click.option("--sku", help="SKU of the sale.")
@click.option(
    "--since",
    metavar="DURATION|TIME",
    help="Read only Stripe objects created in the last DURATION (e.g. 2h, 90m) or since an "
    "ISO 8601 TIME (e.g. 2026-12-03T14:00:00Z, the doors' opening): a sale on an account "
    "other sales or integrations share. [default: every object on the account]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reconciliation as JSON.")
@allow_live_option
def reconcile(
    redis_url: str | None,
    stripe_api_base: str | None,
    sku: str | None,
    since: str | None,
    as_json: bool,
    allow_live_stripe: bool | None,
) -> None:
    """Compare the orders in Redis with the charges and PaymentIntents at Stripe; exit 1 on
    any discrepancy.

    Finds orders with no charge, charges with no order, orders charged more than once,
    paid orders whose charge did not succeed (and the reverse), amount mismatches,
    units sold vs stock, customers who never got a final result, and PaymentIntents of orders
    left open at Stripe (requires_action, requires_confirmation, processing).
    """
    import json

    from rich.console import Console

    from flashsale.core import store
    from flashsale.ops.reconcile import reconcile_live
    from flashsale.ops.views import reconciliation_details, reconciliation_table
    from flashsale.units import parse_since

    settings = load_settings(
        redis_url=redis_url,
        stripe_api_base=stripe_api_base,
        sale_sku=sku,
        allow_live_stripe=allow_live_stripe,
    )
    client = store.connect(settings.redis_url)
    store.check(client)
    result = reconcile_live(settings, client, None if since is None else parse_since(since))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        console = Console()
        console.print(reconciliation_table(result))
        console.print(reconciliation_details(result))
    click.get_current_context().exit(0 if result.ok() else 1)


@cli.command("open-doors")
@click.option("--redis-url", help="Redis of the sale (env FLASHSALE_REDIS_URL).")
@click.option("--sku", help="SKU of the sale.")
@click.option(
    "--after",
    default="0",
    show_default=True,
    help="Open them this long from now, e.g. 30s (every server admits from that instant on).",
)
def open_doors(redis_url: str | None, sku: str | None, after: str) -> None:
    """Open the doors of a sale served with --room-doors closed.

    Customers who came early wait in line; from the opening on, the servers admit them by the
    room's rules, in a random order when it shuffles (--room-order shuffle: nobody gains by
    arriving first). Opening open doors changes nothing. Exit 1 when the sale has no room.
    """
    import time

    from flashsale.core import store, waiting_room

    settings = load_settings(redis_url=redis_url, sale_sku=sku)
    delay_s = parse_duration(after, "--after")
    client = store.connect(settings.redis_url)
    state = waiting_room.doors(client, settings.sale_sku)
    if state is None:
        raise click.ClickException(
            f"no waiting room for sale {settings.sale_sku!r} on this Redis: start "
            "`flashsale serve --waiting-room on --room-doors closed` first"
        )
    if state != "closed":
        click.echo(f"the doors of {settings.sale_sku} are open or opening already: no change")
        return
    queued = waiting_room.open_doors(client, settings.sale_sku, at_s=time.time() + delay_s)
    when = "now" if delay_s == 0 else f"in {after}"
    click.echo(f"the doors of {settings.sale_sku} open {when}: {queued} customers in line")


@cli.command()
@click.option("--redis-url", help="Redis of the sale (env FLASHSALE_REDIS_URL).")
@click.option("--server-url", help="A server to read sockets connected from (its /metrics).")
@click.option("--sku", help="SKU of the sale.")
@click.option("--json", "as_json", is_flag=True, help="Print one snapshot as JSON.")
@click.option("--watch", is_flag=True, help="Refresh the screen until Ctrl-C.")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.2),
    help="Seconds between refreshes with --watch.",
)
@allow_live_option
def status(
    redis_url: str | None,
    server_url: str | None,
    sku: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
    allow_live_stripe: bool | None,
) -> None:
    """Show the sale at a glance: Redis, queue, workers, orders, stock, sockets, Stripe mode."""
    import json

    from rich.console import Console

    from flashsale.ops.status import collect_status, watch_status
    from flashsale.ops.views import status_panel

    settings = load_settings(
        redis_url=redis_url,
        server_url=server_url,
        sale_sku=sku,
        allow_live_stripe=allow_live_stripe,
    )
    target = server_url or settings.server_url
    snapshot = collect_status(settings, target)
    if as_json:
        click.echo(json.dumps(snapshot.as_dict(), indent=2))
    elif watch:
        watch_status(settings, target, interval, status_panel, snapshot)
    else:
        Console().print(status_panel(snapshot))
    click.get_current_context().exit(0 if snapshot.redis_ok else 1)


def given_loadgen_options(args: tuple[str, ...]) -> dict[str, Any]:
    """The `flashsale loadgen` options in args, parsed by that command; only those given."""
    from click.core import ParameterSource

    try:
        context = loadgen.make_context("flashsale rehearse --", list(args))
    except click.ClickException as error:
        raise ConfigError(f"options after --: {error.format_message()}") from None
    return {
        name: value
        for name, value in context.params.items()
        if context.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }


def main() -> None:
    cli(prog_name="flashsale")
