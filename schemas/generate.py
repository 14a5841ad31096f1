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
from schemas.system_events import SystemEventData
from schemas.usage import QuantityUsed, StorageMeasured

MODELS: dict[str, type[BaseModel]] = {
    "cloudevent": CloudEvent,
    "usage.storage": StorageMeasured,
    "usage.quantity": QuantityUsed,
    "licensing.tenant_registered": TenantRegistered,
    "licensing.licenses_changed": LicensesChanged,
    "system.event": SystemEventData,
    "threshold_crossed": ThresholdCrossed,
    "invoice_line": InvoiceLine,
    "dead_letter": DeadLetter,
    "month_close_requested": MonthCloseRequested,
    "month_closed": MonthClosed,
}

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        f"{name}.json": json.dumps(model.model_json_schema(mode="serialization"), indent=2) + "\n"
        for name, model in MODELS.items()
    }


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(MODELS)} schemas to {SCHEMA_DIR}")


if __name__ == "__main__":
    main()
