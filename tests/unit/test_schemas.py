"""The committed JSON Schema files are exactly what the models generate."""

from __future__ import annotations

from schemas.generate import SCHEMA_DIR, models, render
from schemas.services import default_catalog


def test_json_schemas_match_models() -> None:
    rendered = render()
    committed = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert committed == set(rendered), "run `make schemas`: files differ from the models"
    for name, text in rendered.items():
        assert (SCHEMA_DIR / name).read_text() == text, f"{name} drifted: run `make schemas`"


def test_every_service_of_the_table_has_the_schema_of_its_data() -> None:
    names = set(models())
    assert {f"usage.{s}" for s in default_catalog().names} <= names
    assert len(names) == len(render())
