"""One frozen Settings for every component, read from the environment and overridden by flags."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flashsale.errors import ConfigError, LiveStripeKeyRefused
from flashsale.units import parse_duration, parse_rate

# Keys the simulator accepts out of the box; they are test-mode shaped and worthless elsewhere.
SIM_SECRET_KEY = "sk_test_flashsale_simulator"
SIM_PUBLISHABLE_KEY = "pk_test_flashsale_simulator"
SIM_API_BASE = "http://127.0.0.1:12111"
STRIPE_API_BASE = "https://api.stripe.com"
# Shortest FLASHSALE_SECRET accepted: it signs every room token and /notify call.
MIN_SECRET_LENGTH = 16

# The most HTTP requests a server process may work on at once: core.store.MAX_CONNECTIONS
# (128) less 16 kept for the Socket.IO handlers (tests/test_admission.py holds them together).
MAX_IN_FLIGHT = 112

LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


PAYMENT_MODES = ("charges", "intents")


@dataclass(frozen=True)
class Settings:
    """Everything a flashsale component needs to know; build with from_env, change with replace."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    stripe_secret_key: str = SIM_SECRET_KEY
    stripe_publishable_key: str = SIM_PUBLISHABLE_KEY
    stripe_api_base: str = SIM_API_BASE
    # Where the checkout page loads Stripe.js from; empty means "derive from stripe_api_base".
    stripe_js_url: str = ""
    allow_live_stripe: bool = False
    # Signs room tokens and the /notify HMAC; server and worker must share it. Empty: not set
    # (a loopback server then makes a one-off one, see with_served_secret; nothing else will).
    secret: str = ""
    room_token_ttl_s: int = 3600

    # Origins whose browsers may POST /charges (scheme://host[:port]); empty: this server's own
    # scheme and Host only. Set it behind a proxy that terminates TLS.
    allowed_origins: tuple[str, ...] = ()

    sale_sku: str = "FLASH-001"
    sale_name: str = "Limited edition sneakers"
    sale_price: int = 4999  # minor units (cents)
    sale_currency: str = "usd"
    sale_stock: int = 500
    max_quantity: int = 5
    # When Redis has no stock for the sale, open it net of the units Stripe's ledger already
    # charged for the SKU, so a Redis that lost its data cannot sell them again.
    stock_from_ledger: bool = True

    # HTTP requests one server process works on at once; the rest wait up to queue_wait_s,
    # then get a 503 with Retry-After (server/admission.py). Below the Redis pool's size, so
    # the Socket.IO handlers keep connections of their own.
    max_in_flight: int = 96
    queue_wait_s: float = 30.0
    # How often the server pings each websocket (engine.io's heartbeat and its default): a
    # client that does not answer within engine.io's ping timeout (20 s) is dropped.
    ping_interval_s: float = 25.0

    # Which card object clients make, told in /session: "intents" (a PaymentMethod, paid with a
    # PaymentIntent: what Stripe recommends) or "charges" (a token, charged with the Charges
    # API, which Stripe lists as deprecated for creating payments). The worker pays whatever an
    # order carries: pm_ by PaymentIntents, tok_ by Charges.
    payments: str = "intents"
    # The whsec_ secret Stripe signs webhook deliveries with (STRIPE_WEBHOOK_SECRET); empty:
    # /stripe/webhook answers 503, as it cannot tell Stripe's events from anyone's.
    stripe_webhook_secret: str = ""
    # How long a customer has to finish 3D Secure before the worker cancels the PaymentIntent
    # (the sweeper looks again each sweep) and the unit goes back on sale.
    authentication_timeout_s: float = 600.0
    # The waiting room (server.waiting_room, core.waiting_room): off, or on with its rules.
    waiting_room: bool = False
    room_rate: float = 150.0  # admissions a second, all server processes together; 0: none
    room_auto: bool = False  # the rate follows the Stripe budget and the pipeline (auto_admission)
    room_cap: int = 0  # most customers holding a unit at once; 0: no cap
    room_hold_s: float = 120.0  # an admitted customer's unit is theirs this long
    room_retry_s: float = 60.0  # after a decline, this long again to pay with another card
    room_grace_s: float = 10.0  # a customer without a socket this long leaves the room
    room_doors: str = "open"  # "closed": customers queue until the doors are opened
    room_order: str = "fifo"  # "shuffle": those queued before the doors open, in random order

    notify: str = "queue"  # "queue": emit via the Redis message queue; "http": POST /notify
    server_url: str = "http://127.0.0.1:5000"  # where the worker POSTs /notify in http mode
    stripe_timeout_s: float = 10.0
    charge_max_retries: int = 6
    # Exponential backoff between charge retries: base * 2**attempt, capped, with jitter.
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    # A task unacked this long is redelivered; it must outlast the longest retry countdown plus
    # one Stripe call, or a waiting retry would be delivered twice.
    visibility_timeout_s: int = 300
    # Stripe requests per second shared by all workers (core.rate_budget): "auto", "off" or N.
    stripe_rate: str = "auto"
    # The request limit of the Stripe the workers talk to ('test', 'live', 'off', N/s), which
    # 'auto' takes its share of; empty: the key's mode limit against Stripe, none for a simulator.
    stripe_limit: str = ""
    # The limit of one named operation (Stripe: 25/s per endpoint): 'stripe', 'off', N/s, or
    # empty/'auto': 25/s when stripe_limit (or the key's mode) is one of Stripe's modes.
    stripe_endpoint_limit: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read the variables the original pipeline used, plus FLASHSALE_* ones."""
        defaults = cls()
        redis_url = environ.get("FLASHSALE_REDIS_URL") or environ.get("REDIS_URL")
        return cls(
            redis_url=redis_url or defaults.redis_url,
            stripe_secret_key=environ.get("STRIPE_SECRET_KEY") or defaults.stripe_secret_key,
            stripe_publishable_key=environ.get("STRIPE_PUBLISHABLE_KEY")
            or defaults.stripe_publishable_key,
            stripe_api_base=(environ.get("STRIPE_API_BASE") or defaults.stripe_api_base).rstrip(
                "/"
            ),
            stripe_js_url=environ.get("FLASHSALE_STRIPE_JS_URL", defaults.stripe_js_url),
            secret=environ.get("FLASHSALE_SECRET") or defaults.secret,
            server_url=environ.get("FLASHSALE_SERVER_URL") or defaults.server_url,
            stripe_rate=environ.get("FLASHSALE_STRIPE_RATE") or defaults.stripe_rate,
            allowed_origins=tuple(
                origin.strip().rstrip("/").lower()
                for origin in environ.get("FLASHSALE_ALLOWED_ORIGINS", "").split(",")
                if origin.strip()
            ),
            stripe_limit=environ.get("FLASHSALE_STRIPE_LIMIT") or defaults.stripe_limit,
            stripe_endpoint_limit=environ.get("FLASHSALE_STRIPE_ENDPOINT_LIMIT")
            or defaults.stripe_endpoint_limit,
            # The sale, so a deployment without flags (gunicorn, the Procfile) can set it too.
            sale_sku=environ.get("FLASHSALE_SKU") or defaults.sale_sku,
            sale_name=environ.get("FLASHSALE_NAME") or defaults.sale_name,
            sale_price=_int_env(environ, "FLASHSALE_PRICE", defaults.sale_price),
            sale_currency=(environ.get("FLASHSALE_CURRENCY") or defaults.sale_currency).lower(),
            sale_stock=_int_env(environ, "FLASHSALE_STOCK", defaults.sale_stock),
            stock_from_ledger=environ.get("FLASHSALE_STOCK_FROM_LEDGER", "1").lower()
            not in ("0", "false", "no", "off"),
            max_in_flight=_int_env(environ, "FLASHSALE_MAX_IN_FLIGHT", defaults.max_in_flight),
            queue_wait_s=parse_duration(
                environ.get("FLASHSALE_QUEUE_WAIT") or f"{defaults.queue_wait_s:g}s",
                "FLASHSALE_QUEUE_WAIT",
            ),
            ping_interval_s=parse_duration(
                environ.get("FLASHSALE_PING_INTERVAL") or f"{defaults.ping_interval_s:g}s",
                "FLASHSALE_PING_INTERVAL",
            ),
            waiting_room=environ.get("FLASHSALE_WAITING_ROOM", "off").lower()
            in ("1", "on", "true", "yes"),
            payments=(environ.get("FLASHSALE_PAYMENTS") or defaults.payments).lower(),
            stripe_webhook_secret=environ.get("STRIPE_WEBHOOK_SECRET")
            or defaults.stripe_webhook_secret,
            authentication_timeout_s=parse_duration(
                environ.get("FLASHSALE_AUTHENTICATION_TIMEOUT")
                or f"{defaults.authentication_timeout_s:g}s",
                "FLASHSALE_AUTHENTICATION_TIMEOUT",
            ),
        )

    def replace(self, **changes: object) -> Settings:
        """Apply flag overrides; flags left unset (None) keep the current value."""
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]

    def checked(self) -> Settings:
        """Refuse settings that would be dangerous or cannot work; return self when fine."""
        for kind, key, variable, prefixes in (
            ("secret", self.stripe_secret_key, "STRIPE_SECRET_KEY", LIVE_KEY_PREFIXES),
            ("publishable", self.stripe_publishable_key, "STRIPE_PUBLISHABLE_KEY", ("pk_live_",)),
        ):
            if key.startswith(prefixes) and not self.allow_live_stripe:
                raise LiveStripeKeyRefused(
                    f"refusing a live Stripe {kind} key ({variable}): flashsale rehearses against "
                    "test mode or its simulator, so unset it or use a test key; serve, worker, "
                    "reconcile and status take --allow-live-stripe to use it on purpose "
                    "(rehearse never does)"
                )
        if self.payments not in PAYMENT_MODES:
            raise ConfigError(
                f"payments must be one of {', '.join(PAYMENT_MODES)}, not {self.payments!r}"
            )
        if self.notify not in ("queue", "http"):
            raise ConfigError(f"notify must be 'queue' or 'http', not {self.notify!r}")
        if self.sale_price <= 0:
            raise ConfigError("the sale price must be a positive amount in minor units")
        if self.sale_stock < 0:
            raise ConfigError("stock cannot be negative")
        if not 1 <= self.max_quantity <= 100:
            raise ConfigError("max quantity must be between 1 and 100")
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ConfigError(
                f"max in flight must be between 1 and {MAX_IN_FLIGHT} (the Redis pool's "
                f"connections less those the Socket.IO handlers need), not {self.max_in_flight}"
            )
        if self.queue_wait_s <= 0:
            raise ConfigError("the queue wait must be a positive duration, e.g. 10s")
        if self.ping_interval_s < 1 or self.ping_interval_s != int(self.ping_interval_s):
            # engine.io tells clients the interval in whole seconds.
            raise ConfigError("the ping interval must be a whole number of seconds, e.g. 25s")
        if self.waiting_room:
            self._check_room()
        if self.visibility_timeout_s <= self.retry_backoff_max_s + self.stripe_timeout_s:
            raise ConfigError(
                "the broker visibility timeout must exceed the longest retry backoff plus the "
                "Stripe timeout, or a task waiting to retry is delivered twice"
            )
        return self

    def _check_room(self) -> None:
        if self.room_rate < 0 or self.room_cap < 0:
            raise ConfigError("the waiting room's admission rate and cap cannot be negative")
        if self.room_rate == 0 and self.room_cap == 0 and not self.room_auto:
            raise ConfigError(
                "the waiting room needs an admission rate (e.g. --admit-rate 150/s or auto), a "
                "cap on customers in checkout (--admit-cap 200), or both: with neither it admits "
                "everyone at once, which is no waiting room"
            )
        if self.room_hold_s < 5:
            raise ConfigError("a hold must last at least 5s: customers need time to pay")
        if self.room_retry_s < 0 or self.room_grace_s <= 0:
            raise ConfigError("the retry window cannot be negative and the grace must be > 0")
        if self.room_doors not in ("open", "closed") or self.room_order not in ("fifo", "shuffle"):
            raise ConfigError("the room's doors are open or closed, its order fifo or shuffle")

    def with_served_secret(self, host: str) -> tuple[Settings, str | None]:
        """The settings a server on `host` runs with, and what to tell its operator.

        A public constant once signed every token: knowing a customer id was enough to read
        their order, replay their results into one's own socket and sign /notify. Off
        loopback a secret must be set; on loopback a missing one is made up for this run.
        """
        if self.secret:
            if len(self.secret) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"FLASHSALE_SECRET must be at least {MIN_SECRET_LENGTH} characters"
                )
            return self, None
        if host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"serving on {host} needs FLASHSALE_SECRET (it signs room tokens and /notify): "
                "set a long random one, shared by every server process and worker"
            )
        made = dataclasses.replace(self, secret=secrets.token_urlsafe(32))
        return made, (
            "no FLASHSALE_SECRET set: using a one-off secret for this run (room tokens end with "
            "it; set FLASHSALE_SECRET to share one with other servers and --notify http workers)"
        )

    @property
    def stripe_mode(self) -> str:
        """'simulator' when Stripe is on this machine, else 'test' or 'live' by the key."""
        host = urlsplit(self.stripe_api_base).hostname or ""
        if host in LOOPBACK_HOSTS:
            return "simulator"
        return "live" if self.stripe_secret_key.startswith(LIVE_KEY_PREFIXES) else "test"

    @property
    def effective_stripe_js_url(self) -> str:
        """Real Stripe.js v3 against Stripe; the simulator's compatible script otherwise."""
        if self.stripe_js_url:
            return self.stripe_js_url
        if self.stripe_mode == "simulator":
            return f"{self.stripe_api_base}/v3/stripe.js"
        return "https://js.stripe.com/v3/"

    def redacted(self) -> dict[str, object]:
        """The settings as a dict safe for logs and reports: keys and secrets masked."""
        shown = dataclasses.asdict(self)
        for name in ("stripe_secret_key", "stripe_publishable_key", "secret"):
            shown[name] = mask(shown[name])
        return shown


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None


def mask(secret: str) -> str:
    """Keep a key's mode prefix and last 4 characters, hide the rest."""
    if len(secret) <= 12:
        return "***"
    prefix = secret[: secret.find("_", 3) + 1] if secret.count("_") >= 2 else ""
    return f"{prefix}***{secret[-4:]}"


def room_overrides(
    waiting_room: str | None,
    admit_rate: str | None,
    admit_cap: int | None,
    hold: str | None,
    retry_window: str | None,
    room_grace: str | None,
    room_doors: str | None = None,
    room_order: str | None = None,
) -> dict[str, Any]:
    """The Settings changes the waiting room's flags (serve) or keys (a scenario's
    [waiting_room]) ask for; None: left as they are."""
    auto = admit_rate is not None and admit_rate.strip().lower() == "auto"
    return {
        "waiting_room": None if waiting_room is None else waiting_room == "on",
        "room_auto": None if admit_rate is None else auto,
        "room_rate": None
        if admit_rate is None or auto
        else _rate_or_zero(admit_rate, "--admit-rate"),
        "room_cap": admit_cap,
        "room_hold_s": parse_duration(hold, "--hold") if hold else None,
        "room_retry_s": _duration_or_zero(retry_window, "--retry-window"),
        "room_grace_s": parse_duration(room_grace, "--room-grace") if room_grace else None,
        "room_doors": room_doors,
        "room_order": room_order,
    }


def _rate_or_zero(text: str, what: str) -> float:
    return 0.0 if text.strip() in ("0", "0/s") else parse_rate(text, what)


def _duration_or_zero(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    return 0.0 if text.strip() == "0" else parse_duration(text, what)
