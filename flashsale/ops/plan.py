"""A rehearsal plan: the embedded default scenario, a team's TOML scenario, and flag overrides."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from flashsale.errors import ConfigError

SALE_KEYS = {"stock", "price", "currency", "sku", "name", "max_quantity"}
# Worker timings a fault rehearsal shortens (a killed worker's tasks return after
# visibility_timeout), mapped onto `flashsale worker` flags.
WORKER_FLAG_KEYS = ("visibility_timeout", "stripe_timeout", "retry_backoff_max", "max_retries")
PIPELINE_KEYS = {
    "workers",
    "worker_concurrency",
    "server_workers",
    "chaos",
    "redis_durable",
    *WORKER_FLAG_KEYS,
}
TABLES = {"sale", "pipeline", "stripe_sim", "loadgen"}


@dataclass(frozen=True)
class RehearsalPlan:
    """What to start and what load to send; each table maps onto one command's flags."""

    name: str
    sale: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    stripe_sim: dict[str, Any] = field(default_factory=dict)
    loadgen: dict[str, Any] = field(default_factory=dict)

    @property
    def workers(self) -> int:
        return int(self.pipeline.get("workers", 1))

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

    def worker_flags(self) -> list[str]:
        return as_flags({key: self.pipeline.get(key) for key in WORKER_FLAG_KEYS})

    def with_overrides(
        self,
        *,
        sale: dict[str, Any] | None = None,
        pipeline: dict[str, Any] | None = None,
        stripe_sim: dict[str, Any] | None = None,
        loadgen: dict[str, Any] | None = None,
    ) -> RehearsalPlan:
        """Flags given on the command line win over the scenario; None means not given."""

        def merged(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
            return {**base, **{k: v for k, v in (extra or {}).items() if v is not None}}

        return replace(
            self,
            sale=merged(self.sale, sale),
            pipeline=merged(self.pipeline, pipeline),
            stripe_sim=merged(self.stripe_sim, stripe_sim),
            loadgen=merged(self.loadgen, loadgen),
        )


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
    for table, allowed in (("sale", SALE_KEYS), ("pipeline", PIPELINE_KEYS)):
        extra = set(tables[table]) - allowed
        if extra:
            raise ConfigError(
                f"{source}: unknown key(s) in [{table}]: {', '.join(sorted(extra))}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
    spec = tables["pipeline"].get("chaos")
    if spec is not None:
        from flashsale.ops.faults import parse_spec

        try:
            parse_spec(spec)
        except ConfigError as error:
            raise ConfigError(f"{source}: [pipeline] chaos: {error}") from None
    return RehearsalPlan(name=str(data.get("name", Path(source).stem)), **tables)


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
