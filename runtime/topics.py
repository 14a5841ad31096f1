"""The topics' names, in one place: each is its base name behind the deployment's prefix
(`METERING_TOPIC_PREFIX`). What each topic holds and how it is keyed: docs/topics.md."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    usage: str
    licenses: str
    system: str
    crossings: str
    lines: str
    dead_letters: str
    closes: str
    subscriptions: str
    deliveries: str

    @property
    def inputs(self) -> tuple[str, str]:
        """The topics a close barrier must pass through, in every partition."""
        return (self.usage, self.licenses)

    @property
    def all(self) -> tuple[str, ...]:
        return (
            self.usage,
            self.licenses,
            self.system,
            self.crossings,
            self.lines,
            self.dead_letters,
            self.closes,
            self.subscriptions,
            self.deliveries,
        )


def topics_named(prefix: str = "") -> Topics:
    return Topics(
        usage=f"{prefix}usage-events",
        licenses=f"{prefix}licenses",
        system=f"{prefix}system-events",
        crossings=f"{prefix}threshold-crossings",
        lines=f"{prefix}invoice-lines",
        dead_letters=f"{prefix}dead-letters",
        closes=f"{prefix}month-closes",
        subscriptions=f"{prefix}webhook-subscriptions",
        deliveries=f"{prefix}webhook-deliveries",
    )
