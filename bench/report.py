"""Print a benchmark's figures as a table and keep them as JSON in bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


def report(figures: dict[str, Any], name: str, quick: bool) -> None:
    width = max(map(len, figures))
    for key, value in figures.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown:>16}")
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / (f"{name}-quick.json" if quick else f"{name}.json")
    target.write_text(json.dumps(figures, indent=2) + "\n")
