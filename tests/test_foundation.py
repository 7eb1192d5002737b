"""The foundation: CLI surface, settings from the environment, the live-key refusal, our Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis
from click.testing import CliRunner

from flashsale import __version__
from flashsale.cli import cli
from flashsale.errors import ConfigError, LiveStripeKeyRefused
from flashsale.settings import SIM_API_BASE, Settings, mask


def test_python_m_lists_commands_with_descriptions() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flashsale", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "stripe-sim" in result.stdout
    assert "Stripe-compatible simulator" in result.stdout


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_settings_from_env_reads_original_variables() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:7000/3",
            "STRIPE_SECRET_KEY": "sk_test_abc",
            "STRIPE_PUBLISHABLE_KEY": "pk_test_abc",
            "STRIPE_API_BASE": "https://api.stripe.com/",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:7000/3"
    assert settings.stripe_secret_key == "sk_test_abc"
    assert settings.stripe_publishable_key == "pk_test_abc"
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert settings.stripe_mode == "test"


def test_the_sale_can_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "FLASHSALE_SKU": "BF-9",
            "FLASHSALE_NAME": "Jacket",
            "FLASHSALE_PRICE": "1250",
            "FLASHSALE_CURRENCY": "EUR",
            "FLASHSALE_STOCK": "40",
        }
    )
    assert (settings.sale_sku, settings.sale_name) == ("BF-9", "Jacket")
    assert (settings.sale_price, settings.sale_currency, settings.sale_stock) == (1250, "eur", 40)
    with pytest.raises(ConfigError, match="FLASHSALE_STOCK"):
        Settings.from_env({"FLASHSALE_STOCK": "lots"})


def test_flashsale_redis_url_wins_over_redis_url() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "FLASHSALE_REDIS_URL": "redis://127.0.0.1:2/0"}
    )
    assert settings.redis_url == "redis://127.0.0.1:2/0"


def test_defaults_point_at_the_simulator() -> None:
    settings = Settings.from_env({})
    assert settings.stripe_api_base == SIM_API_BASE
    assert settings.stripe_mode == "simulator"


def test_flags_override_and_none_keeps_value() -> None:
    settings = Settings.from_env({}).replace(sale_stock=7, sale_price=None)
    assert settings.sale_stock == 7
    assert settings.sale_price == Settings().sale_price


@pytest.mark.parametrize("key", ["sk_live_" + "x" * 24, "rk_live_" + "y" * 24])
def test_live_key_is_refused_unless_allowed(key: str) -> None:
    settings = Settings.from_env({"STRIPE_SECRET_KEY": key})
    with pytest.raises(LiveStripeKeyRefused):
        settings.checked()
    assert settings.replace(allow_live_stripe=True).checked().stripe_secret_key == key


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        Settings().replace(notify="carrier-pigeon").checked()
    with pytest.raises(ConfigError):
        Settings().replace(sale_stock=-1).checked()


def test_redacted_settings_hide_secrets() -> None:
    key = "sk_test_" + "s3cr3t" * 5
    shown = Settings().replace(stripe_secret_key=key, secret="hmac-secret-value").redacted()
    assert key not in str(shown)
    assert "hmac-secret-value" not in str(shown)
    assert mask(key).endswith(key[-4:])


def test_cli_turns_live_key_into_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from flashsale.cli import load_settings

    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_live_" + "z" * 24)
    with pytest.raises(LiveStripeKeyRefused):
        load_settings()


def test_private_redis_is_ours(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    assert client.connection_pool.connection_kwargs["port"] != 6379
    client.close()


def test_a_live_publishable_key_is_refused_too_and_rehearse_is_told_to_unset_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRIPE_PUBLISHABLE_KEY", "pk_live_" + "z" * 24)
    result = CliRunner().invoke(cli, ["rehearse", "--no-dashboard"])
    assert result.exit_code == 2
    assert "refusing a live Stripe publishable key (STRIPE_PUBLISHABLE_KEY)" in result.output
    assert "unset it" in result.output and "rehearse never does" in result.output
