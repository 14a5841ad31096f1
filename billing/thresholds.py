"""The levels a service-month announces as its usage grows: a warning at 85 % of the included
amount, `exceeded` past it, and each package from the second on. Pure rules of the plan; the
folds decide when a level is crossed (projections/tenant.py)."""

from __future__ import annotations

from billing.rating import Rating

# The share of the included amount at which a tenant is warned, in percent (docs/billing.md).
WARNING_PERCENT = 85
LEVELS = ("warning", "exceeded", "package")


def warning_at(included: int) -> int:
    """The least usage that reaches WARNING_PERCENT of included (and at least 1: no use, no
    warning); integer arithmetic, so the boundary is exact."""
    return max(1, -(-included * WARNING_PERCENT // 100))


def reached_levels(rating: Rating) -> list[tuple[str, int | None]]:
    """Levels the usage has reached: warning, exceeded above included, and packages."""
    levels: list[tuple[str, int | None]] = []
    if rating.usage >= warning_at(rating.included):
        levels.append(("warning", None))
    if rating.usage > rating.included:
        levels.append(("exceeded", None))
        if rating.packages >= 2:
            # Only the highest package is announced: one event can start many packages at once.
            levels.append(("package", rating.packages))
    return levels
