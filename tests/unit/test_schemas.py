"""The committed JSON Schema files are exactly what the models generate."""

from __future__ import annotations

from schemas.generate import MODELS, SCHEMA_DIR, render


def test_json_schemas_match_models() -> None:
    rendered = render()
    committed = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert committed == set(rendered), "run `make schemas`: files differ from the models"
    for name, text in rendered.items():
        assert (SCHEMA_DIR / name).read_text() == text, f"{name} drifted: run `make schemas`"


def test_every_contract_model_has_a_schema() -> None:
    assert len(MODELS) == len(render())
