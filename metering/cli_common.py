"""What every CLI command shares: settings and plan with readable errors, async calls,
month arguments and the output format option."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from billing.plan import DEFAULT_PLAN, Plan, PlanError, load_plan
from metering.client import ApiError
from metering.render import FORMATS
from projections.months import parse_month
from runtime.settings import Settings, SettingsError, load_settings
from schemas.services import ServicesError
from streams.kafka import TopicLayoutError

T = TypeVar("T")


def cli_settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def cli_plan(settings: Settings) -> Plan:
    try:
        return load_plan(settings.plan_file or DEFAULT_PLAN, settings.services_file)
    except (PlanError, ServicesError) as exc:
        raise click.ClickException(str(exc)) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except (TimeoutError, LookupError, SettingsError, OSError, TopicLayoutError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a broker error names itself better than a traceback does
        if type(exc).__module__.startswith("aiokafka"):
            raise click.ClickException(f"Kafka: {exc!r}") from None
        raise


def call_api(settings: Settings, method: str, path: str, **kwargs: Any) -> Any:
    from metering.client import request

    try:
        return request(settings, method, path, **kwargs)
    except (ApiError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from None


def month_callback(_ctx: Any, _param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_month(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True
)
