"""Write the JSON Schema of every contract model to `schemas/jsonschema/` (`make schemas`)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.envelope import CloudEvent
from schemas.licenses import LicensesChanged, TenantRegistered
from schemas.records import (
    DeadLetter,
    InvoiceLine,
    MonthClosed,
    MonthCloseRequested,
    ThresholdCrossed,
)
from schemas.services import default_catalog, payload_model
from schemas.system_events import SystemEventData
from schemas.webhooks import WebhookAttempt, WebhookMessage, WebhookSubscription

MODELS: dict[str, type[BaseModel]] = {
    "cloudevent": CloudEvent,
    "licensing.tenant_registered": TenantRegistered,
    "licensing.licenses_changed": LicensesChanged,
    "system.event": SystemEventData,
    "threshold_crossed": ThresholdCrossed,
    "invoice_line": InvoiceLine,
    "dead_letter": DeadLetter,
    "month_close_requested": MonthCloseRequested,
    "month_closed": MonthClosed,
    "webhook_subscription": WebhookSubscription,
    "webhook_attempt": WebhookAttempt,
    "webhook_message": WebhookMessage,
}

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def models() -> dict[str, type[BaseModel]]:
    """Every contract model by file name: the fixed ones, and the `data` of each service of
    the packaged services table (`usage.<service>`)."""
    usage = {f"usage.{s.name}": payload_model(s) for s in default_catalog().services}
    return {**MODELS, **usage}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        f"{name}.json": json.dumps(model.model_json_schema(mode="serialization"), indent=2) + "\n"
        for name, model in models().items()
    }


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    rendered = render()
    for stale in SCHEMA_DIR.glob("*.json"):
        if stale.name not in rendered:
            stale.unlink()
    for name, text in rendered.items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(rendered)} schemas to {SCHEMA_DIR}")


if __name__ == "__main__":
    main()
