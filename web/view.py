"""What the Licences screen shows, computed from query rows: pure, no request, no clock.

The read model answers in exact decimals (as text); this module decides what the page draws
(bars, the included line, package boundaries) and how each value reads in the chosen language.
Chart coordinates are floats, which is fine: nobody is invoiced for a pixel.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal

from billing.plan import Plan
from web.i18n import Language, label

WIDTH: Final = 420
HEIGHT: Final = 190
LEFT: Final = 52
RIGHT: Final = 8
TOP: Final = 10
BOTTOM: Final = 30
NONE: Final = "\u2013"  # an en dash: no value
# More boundary lines than this turn the chart into stripes; the table lists every package.
MAX_BOUNDARIES: Final = 12


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _moment(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _day(value: Any) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


# British English: the product bills in euros to European tenants, and day-month dates read
# the same way in both languages.
LOCALES: Final[dict[Language, str]] = {"nl": "nl_NL", "en": "en_GB"}


@dataclass(frozen=True)
class Formats:
    """Numbers, money and dates as the chosen language writes them."""

    language: Language
    zone: dt.tzinfo

    @property
    def locale(self) -> str:
        return LOCALES[self.language]

    def number(self, value: Decimal | int | None) -> str:
        return NONE if value is None else format_decimal(value, locale=self.locale)

    def money(self, value: Decimal | None, currency: str) -> str:
        if value is None:
            return NONE
        return format_currency(value, currency, locale=self.locale)

    def percent(self, value: Decimal | None) -> str:
        return NONE if value is None else f"{format_decimal(value, locale=self.locale)} %"

    def day(self, value: Any) -> str:
        found = _day(value)
        return NONE if found is None else format_date(found, "medium", locale=self.locale)

    def moment(self, value: Any) -> str:
        found = _moment(value)
        if found is None:
            return NONE if value is None else str(value)
        return format_datetime(found, "medium", tzinfo=self.zone, locale=self.locale)

    def month(self, month: str, pattern: str = "MMM yy") -> str:
        year, number = (int(part) for part in month.split("-"))
        return format_date(dt.date(year, number, 1), pattern, locale=self.locale)


@dataclass(frozen=True)
class Bar:
    month: str
    label: str
    usage: Decimal
    included: Decimal | None
    packages: int
    over: bool
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Chart:
    service: str
    name: str
    unit: str
    aria_label: str
    bars: list[Bar]
    included_path: str
    boundary_paths: list[str]
    top_label: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: float = HEIGHT - BOTTOM


def _step_path(levels: list[float | None], slot: float) -> str:
    """A stepped line: one horizontal segment per month, broken where a month has no level."""
    parts: list[str] = []
    pen_down = False
    for index, level in enumerate(levels):
        if level is None:
            pen_down = False
            continue
        x0, x1 = LEFT + index * slot, LEFT + (index + 1) * slot
        parts.append(f"V{level:.1f}" if pen_down else f"M{x0:.1f} {level:.1f}")
        parts.append(f"H{x1:.1f}")
        pen_down = True
    return " ".join(parts)


def chart(
    service: str, months: list[str], rows: dict[str, dict[str, Any]], plan: Plan, fmt: Formats
) -> Chart:
    """One service's bars for `months`, with the included amount and package boundaries as
    stepped lines (each month has its own included amount: it follows the users)."""
    usages = [_decimal(rows[m]["usage"]) if m in rows else None for m in months]
    included = [_decimal(rows[m]["included"]) if m in rows else None for m in months]
    # The services table names the service and its unit in each language.
    spec = plan.catalog[service]
    unit = getattr(spec.unit, fmt.language)
    peak = max([v for v in usages + included if v is not None], default=Decimal(0))
    scale = _Scale(
        top=peak * Decimal("1.15") if peak > 0 else Decimal(1),
        slot=(WIDTH - LEFT - RIGHT) / len(months),
    )
    bars = [
        _bar(month, index, usages[index] or Decimal(0), included[index], rows, unit, scale, fmt)
        for index, month in enumerate(months)
    ]
    name = getattr(spec.label, fmt.language)
    top = scale.top
    return Chart(
        service=service,
        name=name,
        unit=unit,
        aria_label=label("chart_label", fmt.language).format(
            service=name, first=fmt.month(months[0], "MMMM y"), last=fmt.month(months[-1], "MMMM y")
        ),
        bars=bars,
        included_path=_step_path([None if v is None else scale.y(v) for v in included], scale.slot),
        boundary_paths=_boundaries(included, _packages(service, months, plan), scale),
        top_label=fmt.number(top.quantize(Decimal(1)) if top >= 10 else top.normalize()),
    )


@dataclass(frozen=True)
class _Scale:
    """A chart's coordinates: the value at its top, and the width of each month's slot."""

    top: Decimal
    slot: float

    def y(self, value: Decimal) -> float:
        plot_height = HEIGHT - TOP - BOTTOM
        return TOP + plot_height * (1 - float(value / self.top))


def _packages(service: str, months: list[str], plan: Plan) -> list[Decimal | None]:
    """Each month's package size for the service, as that month's plan version has it."""
    packages_of = []
    for month in months:
        version = plan.version_for(month)
        rate = version.services.get(service) if version else None
        packages_of.append(Decimal(rate.package) if rate else None)
    return packages_of


def _bar(
    month: str,
    index: int,
    usage: Decimal,
    inc: Decimal | None,
    rows: dict[str, dict[str, Any]],
    unit: str,
    scale: _Scale,
    fmt: Formats,
) -> Bar:
    """One month's bar (the `index`th), its tooltip saying how far over its included amount."""
    over = inc is not None and usage > inc
    packages = int(rows[month]["packages"]) if month in rows else 0
    title = f"{fmt.month(month, 'MMMM y')}: {fmt.number(usage)} {unit}"
    if inc is not None:
        title += f" ({label('included', fmt.language).lower()} {fmt.number(inc)} {unit})"
    if over:
        title += f", {label('over_threshold', fmt.language).lower()}: {packages}\u00d7"
    top_y = scale.y(usage)
    return Bar(
        month=month,
        label=fmt.month(month, "MMM"),
        usage=usage,
        included=inc,
        packages=packages,
        over=over,
        x=LEFT + index * scale.slot + scale.slot * 0.2,
        y=top_y,
        width=scale.slot * 0.6,
        height=HEIGHT - BOTTOM - top_y,
        title=title,
    )


def _boundaries(
    included: list[Decimal | None], packages_of: list[Decimal | None], scale: _Scale
) -> list[str]:
    """The stepped lines where each further package starts, as far as the chart reaches."""
    boundaries = []
    for k in range(1, MAX_BOUNDARIES + 1):
        levels: list[float | None] = []
        for inc, package in zip(included, packages_of, strict=True):
            edge = None if inc is None or package is None else inc + k * package
            levels.append(scale.y(edge) if edge is not None and edge <= scale.top else None)
        if all(level is None for level in levels):
            break
        boundaries.append(_step_path(levels, scale.slot))
    return boundaries


@dataclass(frozen=True)
class ServiceNow:
    """This month's figures for one service, next to its chart."""

    chart: Chart
    usage: str
    included: str
    percent: str
    amount: str
    packages: int
    over: bool


def metered_services(
    months: list[str], history: list[dict[str, Any]], plan: Plan, fmt: Formats
) -> list[ServiceNow]:
    by_service: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in plan.catalog.names}
    for row in history:
        by_service.setdefault(row["service"], {})[row["month"]] = row
    current = months[-1]
    services = []
    for service in plan.catalog.names:
        rows = by_service[service]
        drawn = chart(service, months, rows, plan, fmt)
        now = rows.get(current)
        version = plan.version_for(current)
        currency = str(now["currency"]) if now else (version.currency if version else "EUR")
        usage = _decimal(now["usage"]) if now else Decimal(0)
        included = _decimal(now["included"]) if now else None
        services.append(
            ServiceNow(
                chart=drawn,
                usage=f"{fmt.number(usage)} {drawn.unit}",
                included=NONE if included is None else f"{fmt.number(included)} {drawn.unit}",
                percent=fmt.percent(_decimal(now["percent"]) if now else None),
                amount=fmt.money(_decimal(now["amount"]) if now else Decimal("0.00"), currency),
                packages=int(now["packages"]) if now else 0,
                over=included is not None and usage is not None and usage > included,
            )
        )
    return services


@dataclass(frozen=True)
class Message:
    ident: str
    event: str
    status: str
    status_code: str
    message: str
    activated: str
    activated_by: str
    finished: str
    type: str


def messages(rows: list[dict[str, Any]], fmt: Formats) -> list[Message]:
    """The system-messages list, in the order the query gives (newest first)."""
    found = []
    for row in rows:
        status = str(row.get("status") or "")
        if row.get("finished"):
            finished = fmt.moment(row["finished"])
        elif row.get("expected_completion"):
            expected = label("expected", fmt.language)
            finished = f"{expected} {fmt.moment(row['expected_completion'])}"
        else:
            finished = NONE
        scope = str(row.get("scope") or "system")
        found.append(
            Message(
                ident=f"{row['event']}:{scope}:{row.get('owner') or ''}",
                event=str(row["event"]),
                status=label(f"status_{status}", fmt.language) if status else NONE,
                status_code=status,
                message=str(row.get("message") or ""),
                activated=fmt.moment(row.get("activated")),
                activated_by=str(row.get("activated_by") or NONE),
                finished=finished,
                type=label(
                    "scope_system" if row.get("system_wide") else f"scope_{scope}", fmt.language
                ),
            )
        )
    return found


@dataclass(frozen=True)
class NextInvoice:
    """The next invoice as it stands: what the next close would bill the tenant now."""

    invoice_month: str
    usage_month: str
    total: Decimal
    pending: Decimal  # adjustments late events have caused for months already billed
    currency: str
    lines: int


def next_invoice(preview: dict[str, Any] | None, plan: Plan) -> NextInvoice | None:
    """The page's summary of `readmodel.whatif.preview` (None: nothing to bill, or no
    preview)."""
    if preview is None or not preview["lines"]:
        return None
    version = plan.version_for(preview["usage_month"]) or plan.versions[-1]
    return NextInvoice(
        invoice_month=preview["invoice_month"],
        usage_month=preview["usage_month"],
        total=Decimal(preview["total"]),
        pending=Decimal(preview["pending_total"]),
        currency=version.currency,
        lines=len(preview["lines"]),
    )
