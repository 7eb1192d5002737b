"""A rehearsal plan: the embedded default scenario, a team's TOML scenario, and flag overrides."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from flashsale.errors import ConfigError
from flashsale.loadgen.scenario import LoadConfig, check_options, load_config
from flashsale.ops.faults import parse_spec
from flashsale.settings import Settings, room_overrides
from flashsale.stripe_sim.config import SimConfig

# What each key of [sale] and [pipeline] takes: a check, and the words for a refusal.
Check = tuple[type | tuple[type, ...], Any, str]
SALE_KEYS: dict[str, Check] = {
    "stock": (int, lambda v: v >= 0, "a whole number of units, 0 or more"),
    "price": (int, lambda v: v >= 1, "a whole amount in minor units (cents), above 0"),
    "currency": (str, lambda v: len(v) == 3 and v.isalpha(), "a 3-letter ISO code like usd"),
    "sku": (str, lambda v: bool(v.strip()), "a non-empty SKU"),
    "name": (str, lambda v: bool(v.strip()), "a non-empty name"),
    "max_quantity": (int, lambda v: 1 <= v <= 100, "a whole number from 1 to 100"),
    "payments": (str, lambda v: v in ("charges", "intents"), "charges or intents"),
}
# Worker timings a fault rehearsal shortens (a killed worker's tasks return after
# visibility_timeout), mapped onto `flashsale worker` flags; numbers of seconds, as those flags.
WORKER_FLAG_KEYS = ("visibility_timeout", "stripe_timeout", "retry_backoff_max", "max_retries")
SECONDS = (int, float)
PIPELINE_KEYS: dict[str, Check] = {
    "workers": (int, lambda v: v >= 1, "a whole number of worker processes, 1 or more"),
    "worker_concurrency": (int, lambda v: v >= 1, "a whole number of threads, 1 or more"),
    "server_workers": (int, lambda v: v >= 1, "a whole number of server processes, 1 or more"),
    "chaos": (str, lambda v: True, "a fault spec like 'kill-worker@5s'"),
    "redis_durable": (bool, lambda v: True, "true or false"),
    "redis_sentinel": (bool, lambda v: True, "true or false"),
    "visibility_timeout": (int, lambda v: v >= 1, "a whole number of seconds"),
    "stripe_timeout": (SECONDS, lambda v: v > 0, "a number of seconds above 0"),
    "retry_backoff_max": (SECONDS, lambda v: v >= 0, "a number of seconds"),
    "max_retries": (int, lambda v: v >= 0, "a whole number, 0 or more"),
}
# The waiting room (serve's --waiting-room and its rules); durations and rates carry units.
ROOM_KEYS: dict[str, Check] = {
    "enabled": (bool, lambda v: True, "true or false"),
    "admit_rate": ((str, int), lambda v: True, "a rate like '150/s', 'auto', or 0 for none"),
    "admit_cap": (int, lambda v: v >= 0, "a whole number of customers, 0 for no cap"),
    "hold": (str, lambda v: True, "a duration like '120s'"),
    "retry_window": ((str, int), lambda v: True, "a duration like '60s', or 0 for none"),
    "room_grace": (str, lambda v: True, "a duration like '10s'"),
    "room_doors": (str, lambda v: v in ("open", "closed"), "open or closed"),
    "room_order": (str, lambda v: v in ("fifo", "shuffle"), "fifo or shuffle"),
}
STRIPE_SIM_KEYS = {
    "rate_limit",
    "concurrency_limit",
    "endpoint_rate_limit",
    "endpoint_concurrency_limit",
    "latency",
    "error_rate",
    "drop_rate",
    "idempotency_ttl",
}
# Set by rehearse itself: where the sale is and where the reports go.
REHEARSE_OWNS = {"url", "report", "html"}
TABLES = {"sale", "pipeline", "stripe_sim", "loadgen", "waiting_room"}


@dataclass(frozen=True)
class RehearsalPlan:
    """What to start and what load to send; each table maps onto one command's flags."""

    name: str
    sale: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    stripe_sim: dict[str, Any] = field(default_factory=dict)
    loadgen: dict[str, Any] = field(default_factory=dict)
    waiting_room: dict[str, Any] = field(default_factory=dict)

    @property
    def payments(self) -> str:
        """What customers pay with: 'intents' (PaymentMethods) or 'charges' (tokens)."""
        return str(self.sale.get("payments", Settings().payments))

    @property
    def room_on(self) -> bool:
        """A [waiting_room] table turns it on unless it says enabled = false."""
        return bool(self.waiting_room) and bool(self.waiting_room.get("enabled", True))

    @property
    def workers(self) -> int:
        return int(self.pipeline.get("workers", 1))

    @property
    def server_workers(self) -> int:
        return int(self.pipeline.get("server_workers", 1))

    @property
    def worker_concurrency(self) -> int:
        return int(self.pipeline.get("worker_concurrency", 32))

    @property
    def chaos(self) -> str | None:
        """The fault spec (see flashsale.ops.faults), or None for a run without faults."""
        spec = self.pipeline.get("chaos")
        return str(spec) if spec else None

    @property
    def redis_durable(self) -> bool:
        return bool(self.pipeline.get("redis_durable", False))

    @property
    def redis_sentinel(self) -> bool:
        return bool(self.pipeline.get("redis_sentinel", False))

    def server_flags(self) -> list[str]:
        """`flashsale serve` flags: the sale, and --workers for several server processes."""
        processes = self.server_workers
        room = ["--waiting-room", "on", *as_flags(self.room_rules())] if self.room_on else []
        return [
            *as_flags(self.sale),
            *(["--workers", str(processes)] if processes > 1 else []),
            *room,
        ]

    def room_rules(self) -> dict[str, Any]:
        return {key: value for key, value in self.waiting_room.items() if key != "enabled"}

    def worker_flags(self) -> list[str]:
        return as_flags({key: self.pipeline.get(key) for key in WORKER_FLAG_KEYS})

    def with_overrides(
        self,
        *,
        sale: dict[str, Any] | None = None,
        pipeline: dict[str, Any] | None = None,
        stripe_sim: dict[str, Any] | None = None,
        loadgen: dict[str, Any] | None = None,
        waiting_room: dict[str, Any] | None = None,
    ) -> RehearsalPlan:
        """Flags given on the command line win over the scenario; None means not given."""

        def merged(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
            return {**base, **{k: v for k, v in (extra or {}).items() if v is not None}}

        changed = replace(
            self,
            sale=merged(self.sale, sale),
            pipeline=merged(self.pipeline, pipeline),
            stripe_sim=merged(self.stripe_sim, stripe_sim),
            loadgen=merged(self.loadgen, loadgen),
            waiting_room=merged(self.waiting_room, waiting_room),
        )
        return changed.checked("the command line")

    def checked(self, source: str) -> RehearsalPlan:
        """Refuse every unknown key and bad value, naming the table and key: before anything
        starts, not when the component that reads it fails."""
        tables = (("sale", SALE_KEYS), ("pipeline", PIPELINE_KEYS), ("waiting_room", ROOM_KEYS))
        for table, allowed in tables:
            values = getattr(self, table)
            extra = set(values) - set(allowed)
            if extra:
                raise ConfigError(
                    f"{source}: unknown key(s) in [{table}]: {', '.join(sorted(extra))}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
            for key, value in values.items():
                kinds, valid, wanted = allowed[key]
                if isinstance(value, bool) and kinds is not bool or not isinstance(value, kinds):
                    raise ConfigError(f"{source}: [{table}] {key} must be {wanted}, not {value!r}")
                if not valid(value):
                    raise ConfigError(f"{source}: [{table}] {key} must be {wanted}, not {value!r}")
        self._check_worker_timings(source)
        self._check_room(source)
        if self.chaos is not None:
            try:
                parse_spec(self.chaos)
            except ConfigError as error:
                raise ConfigError(f"{source}: [pipeline] chaos: {error}") from None
        extra = set(self.stripe_sim) - STRIPE_SIM_KEYS
        if extra:
            raise ConfigError(
                f"{source}: unknown key(s) in [stripe_sim]: {', '.join(sorted(extra))}; "
                f"allowed: {', '.join(sorted(STRIPE_SIM_KEYS))}"
            )
        try:
            SimConfig.from_options(
                **{
                    ("idempotency_ttl_s" if key == "idempotency_ttl" else key): value
                    for key, value in self.stripe_sim.items()
                }
            )
        except ConfigError as error:
            raise ConfigError(f"{source}: [stripe_sim] {error}") from None
        owned = sorted(set(self.loadgen) & REHEARSE_OWNS)
        if owned:
            raise ConfigError(
                f"{source}: [loadgen] {', '.join(owned)}: rehearse sets these itself "
                "(its server's URL, report.json and report.html in the run directory)"
            )
        try:
            check_options(self.loadgen)
        except ConfigError as error:
            raise ConfigError(f"{source}: [loadgen] {error}") from None
        return self

    def _check_worker_timings(self, source: str) -> None:
        timings = {key: self.pipeline[key] for key in WORKER_FLAG_KEYS if key in self.pipeline}
        settings = Settings().replace(
            visibility_timeout_s=timings.get("visibility_timeout"),
            stripe_timeout_s=timings.get("stripe_timeout"),
            retry_backoff_max_s=timings.get("retry_backoff_max"),
        )
        try:
            settings.checked()
        except ConfigError as error:
            raise ConfigError(f"{source}: [pipeline] {error}") from None

    def _check_room(self, source: str) -> None:
        """The room's rules as serve will read them, refused here rather than at its start."""
        rules = {key: self.waiting_room.get(key) for key in ROOM_KEYS if key != "enabled"}
        try:
            changes = room_overrides(
                "on" if self.room_on else "off",
                None if rules["admit_rate"] is None else str(rules["admit_rate"]),
                rules["admit_cap"],
                rules["hold"],
                None if rules["retry_window"] is None else str(rules["retry_window"]),
                rules["room_grace"],
                rules["room_doors"],
                rules["room_order"],
            )
            Settings().replace(**changes).checked()
        except ConfigError as error:
            raise ConfigError(f"{source}: [waiting_room] {error}") from None

    def load_config(self, extra: dict[str, Any] | None = None, **rehearse: Any) -> LoadConfig:
        """The load run of this plan: its [loadgen] table, then `extra` (the options after
        `--`) and what rehearse sets itself (url, report, html, ...), checked as one."""
        options = {**self.loadgen, **(extra or {}), **rehearse}
        options.setdefault("url", "http://127.0.0.1:1")  # the server's, once it listens
        return load_config(options)


def default_plan() -> RehearsalPlan:
    text = resources.files("flashsale.ops").joinpath("scenarios/default.toml").read_text()
    return parse_plan(text, "the default scenario")


def load_plan(path: Path) -> RehearsalPlan:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read scenario {path}: {error.strerror}") from error
    return parse_plan(text, str(path))


def parse_plan(text: str, source: str) -> RehearsalPlan:
    """Parse and check a scenario; every mistake names the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from error
    unknown = set(data) - TABLES - {"name"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"expected name and the tables {', '.join(sorted(TABLES))}"
        )
    tables: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        value = data.get(table, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{table}] must be a table")
        tables[table] = value
    name = data.get("name", Path(source).stem)
    return RehearsalPlan(name=str(name), **tables).checked(source)


def as_flags(options: dict[str, Any]) -> list[str]:
    """{'doors_open': True, 'slo': ['a', 'b']} -> ['--doors-open', '--slo', 'a', '--slo', 'b']."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return flags
