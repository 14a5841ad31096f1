"""The notifier's pure decisions: who gets a notice, when a delivery is tried again, which
endpoints are called, and the secrets webhooks are signed with."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from notify.endpoints import RefusedEndpoint, check_url
from notify.notices import crossing_notice, invoice_notices, recipients
from notify.schedule import (
    FIRST_DELAY,
    GIVE_UP_AFTER,
    LONGEST_DELAY,
    Delivery,
    after_attempt,
    retry_delay,
)
from notify.signing import signing_key, subscription_secret
from notify.system_events import apply_system_event, overdue
from schemas.records import InvoiceLine, ThresholdCrossed
from schemas.system_events import SystemEventData
from schemas.webhooks import WebhookSubscription

T0 = dt.datetime(2026, 3, 14, 9, 30, tzinfo=dt.UTC)


def _crossing(tenant: str = "acme", level: str = "exceeded") -> ThresholdCrossed:
    return ThresholdCrossed(
        id=f"crossing-{tenant}-{level}", tenant=tenant, service="mailing", usage_month="2026-03",
        level=level, package=None if level != "package" else 2, usage=12_000, included=10_000,
        users=40, crossed_by="crm/m2", crossed_at=T0,
    )  # fmt: skip


def _subscription(n: int, **fields: object) -> WebhookSubscription:
    values: dict[str, object] = {
        "id": f"wh_{n:032x}", "owner": "finance", "url": "https://example.com/hook",
        "event_types": ("threshold.exceeded",), "created_at": T0,
    }  # fmt: skip
    return WebhookSubscription.model_validate({**values, **fields})


def test_a_notice_goes_to_live_subscriptions_of_its_type_and_tenant_in_id_order() -> None:
    notice = crossing_notice(_crossing())
    assert notice.webhook_id == "crossing-acme-exceeded"
    assert notice.event_type == "threshold.exceeded"
    subscriptions = [
        _subscription(5),  # every tenant
        _subscription(2, tenant="acme", owner="tenant:acme"),
        _subscription(3, tenant="other"),
        _subscription(4, event_types=("threshold.warning",)),
        _subscription(1, deleted_at=T0, version=2),
    ]
    assert [s.id for s in recipients(notice, subscriptions)] == [
        f"wh_{2:032x}",
        f"wh_{5:032x}",
    ]


def test_the_body_carries_the_crossing_as_the_topic_has_it() -> None:
    crossing = _crossing(level="package")
    notice = crossing_notice(crossing)
    assert notice.message.model_dump(mode="json") == {
        "type": "threshold.package",
        "timestamp": "2026-03-14T09:30:00Z",
        "data": crossing.model_dump(mode="json"),
    }


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=0.999999))
def test_retries_back_off_to_an_hour_with_jitter(attempt: int, jitter: float) -> None:
    base = min(LONGEST_DELAY, FIRST_DELAY * 2 ** min(attempt - 1, 40))
    delay = retry_delay(attempt, jitter)
    assert base // 2 <= delay < base
    assert retry_delay(attempt, 0.0) <= retry_delay(attempt + 1, 0.0)


@given(st.lists(st.floats(min_value=0, max_value=0.999999), min_size=1, max_size=200))
def test_a_failing_delivery_is_tried_for_24_hours_then_failed(jitters: list[float]) -> None:
    delivery = Delivery(
        subscription="wh_1", webhook_id="x", event_type="threshold.warning", tenant="acme",
        body="{}", created=0, next_try=0,
    )  # fmt: skip
    for jitter in jitters:
        if delivery.status != "pending":
            break
        now = delivery.next_try
        delivery = after_attempt(delivery, False, now, jitter)
        if delivery.status == "pending":
            assert delivery.next_try - delivery.created <= GIVE_UP_AFTER
            assert delivery.next_try > now
        else:
            assert delivery.status == "failed"
            assert now - delivery.created == GIVE_UP_AFTER  # the last try was at 24 hours
    # ~30 attempts fit in 24 hours whatever the jitter: 200 always end in failed.
    if len(jitters) >= 60:
        assert delivery.status == "failed"


def test_a_delivery_answered_2xx_is_delivered_and_never_due_again() -> None:
    delivery = Delivery(
        subscription="wh_1", webhook_id="x", event_type="threshold.warning", tenant="acme",
        body="{}", created=0, next_try=0,
    )  # fmt: skip
    done = after_attempt(after_attempt(delivery, False, 0, 0.5), True, 10**7, 0.5)
    assert (done.status, done.attempts) == ("delivered", 2)
    assert not done.due(10**12)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("https://user:pw@example.com/x", "credentials"),
        ("https:///x", "no host"),
        ("http://127.0.0.1:8080/x", "not a public address"),
        ("http://10.1.2.3/x", "not a public address"),
        ("http://192.168.0.7/x", "not a public address"),
        ("http://169.254.169.254/latest/meta-data", "not a public address"),
        ("http://[::1]/x", "not a public address"),
        ("http://[::ffff:127.0.0.1]/x", "not a public address"),
        ("http://[64:ff9b::a00:1]/x", "not a public address"),  # NAT64 of 10.0.0.1
        ("http://[2002:a00:1::1]/x", "not a public address"),  # 6to4 of 10.0.0.1
        ("http://0.0.0.0/x", "not a public address"),
        ("http://example.com:99999/x", "not a valid URL"),
    ],
)
def test_endpoints_that_are_not_public_http_are_refused(url: str, reason: str) -> None:
    with pytest.raises(RefusedEndpoint, match=reason):
        check_url(url, allow_private=False)


def test_public_endpoints_and_allowed_private_ones_pass() -> None:
    assert check_url("https://hooks.example.com/in", False) == ("hooks.example.com", 443)
    assert check_url("http://93.184.215.14:8080/in", False) == ("93.184.215.14", 8080)
    assert check_url("http://127.0.0.1:9/in", True) == ("127.0.0.1", 9)


def test_secrets_are_per_subscription_and_verify_with_standard_webhooks(tmp_path: Path) -> None:
    key = signing_key(None, tmp_path)
    assert stat.S_IMODE((tmp_path / "webhook-signing.key").stat().st_mode) == 0o600
    assert signing_key(None, tmp_path) == key  # kept, not made again
    first, second = subscription_secret(key, "wh_1"), subscription_secret(key, "wh_2")
    assert first != second and first.startswith("whsec_")
    assert subscription_secret(key, "wh_1") == first
    assert subscription_secret(b"another key of enough length......", "wh_1") != first
    body = '{"type":"threshold.warning"}'
    signature = Webhook(first).sign("msg_1", T0, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(T0.timestamp())),
        "webhook-signature": signature,
    }
    with pytest.raises(Exception, match="timestamp"):
        Webhook(first).verify(body, headers)  # T0 is long past: the receiver's tolerance
    assert Webhook(first).sign("msg_1", T0, body) != Webhook(second).sign("msg_1", T0, body)


def test_a_configured_signing_key_wins_and_a_short_key_file_is_refused(tmp_path: Path) -> None:
    assert signing_key("k" * 40, tmp_path) == b"k" * 40
    assert not (tmp_path / "webhook-signing.key").exists()
    (tmp_path / "webhook-signing.key").write_text("short")
    with pytest.raises(ValueError, match="no signing key"):
        signing_key(None, tmp_path)


def _line(tenant: str, service: str, amount: str, n: int) -> InvoiceLine:
    return InvoiceLine.model_validate({
        "id": f"line-{tenant}-{n}", "invoice_month": "2026-04", "usage_month": "2026-03",
        "tenant": tenant, "service": service, "kind": "overage", "usage": "12000",
        "unit": "mailing", "users": 40, "included": "10000", "packages": 1,
        "unit_price": amount, "amount": amount, "currency": "EUR", "plan_version": "2026",
        "provenance": {"events": 3, "partition": 1, "first_offset": 0, "last_offset": 9,
                       "close_id": "close-1"},
    })  # fmt: skip


def test_a_close_makes_one_invoice_notice_per_tenant_with_its_lines_and_total() -> None:
    lines = [
        _line("acme", "mailing", "32.40", 1),
        _line("zeta", "chat", "0.10", 1),
        _line("acme", "chat", "10.05", 2),
    ]
    notices = invoice_notices(lines, T0)
    assert [n.tenant for n in notices] == ["acme", "zeta"]
    acme = notices[0].message
    assert acme.type == "invoice.closed"
    assert acme.data["total"] == "42.45"
    assert [line["id"] for line in acme.data["lines"]] == ["line-acme-2", "line-acme-1"]
    assert (acme.data["invoice_month"], acme.data["close_id"]) == ("2026-04", "close-1")
    # The same close gives the same ids whatever order its lines came in.
    again = invoice_notices(list(reversed(lines)), T0)
    assert [n.webhook_id for n in again] == [n.webhook_id for n in notices]
    assert notices[0].body() == again[0].body()
    assert len({n.webhook_id for n in notices}) == 2


def _sys(**fields: object) -> SystemEventData:
    return SystemEventData.model_validate({"key": "import", "scope": "database", **fields})


def test_a_system_event_is_told_started_then_finished_and_overdue_only_while_running() -> None:
    eta = T0 + dt.timedelta(hours=1)
    state, told = apply_system_event(
        None, "system.event.registered", "acme", _sys(status="queued", eta=eta), T0
    )
    assert state is not None and state.active and told == []
    state, told = apply_system_event(
        state, "system.event.updated", "acme", _sys(status="running", activated_at=T0), T0
    )
    assert [n.event_type for n in told] == ["system_event.started"]
    assert state is not None and state.eta == eta  # an update keeps what it does not give
    assert overdue(state, eta - dt.timedelta(seconds=1)) is None
    late = overdue(state, eta)
    assert late is not None and late.event_type == "system_event.overdue"
    assert overdue(state, eta + dt.timedelta(hours=5)) == late  # the same notice, same id
    again, told_again = apply_system_event(
        state, "system.event.updated", "acme", _sys(message="still going"), T0
    )
    assert told_again == [] and again is not None and again.status == "running"
    done, told = apply_system_event(
        again, "system.event.updated", "acme", _sys(status="finished"), eta
    )
    assert [n.event_type for n in told] == ["system_event.finished"]
    assert done is not None and not done.active
    assert overdue(done, eta + dt.timedelta(hours=5)) is None
    gone, told = apply_system_event(done, "system.event.deleted", "acme", _sys(), eta)
    assert gone is None and told == []


def test_a_second_run_of_the_same_system_event_is_a_new_notice() -> None:
    _, told_first = apply_system_event(
        None, "system.event.registered", "acme", _sys(status="running", activated_at=T0), T0
    )
    later = T0 + dt.timedelta(days=1)
    _, told_second = apply_system_event(
        None, "system.event.registered", "acme", _sys(status="running", activated_at=later), later
    )
    assert told_first[0].webhook_id != told_second[0].webhook_id
    _, told_replay = apply_system_event(
        None, "system.event.registered", "acme", _sys(status="running", activated_at=T0), T0
    )
    assert told_replay[0].webhook_id == told_first[0].webhook_id  # a replay: the same id


def test_an_update_of_nothing_registered_is_ignored_and_a_null_status_changes_nothing() -> None:
    ghost, told = apply_system_event(
        None, "system.event.updated", "acme", _sys(status="running", activated_at=T0), T0
    )
    assert ghost is None and told == []
    running, told = apply_system_event(
        None, "system.event.registered", "acme", _sys(status="running", activated_at=T0), T0
    )
    assert running is not None and len(told) == 1
    still, told = apply_system_event(
        running, "system.event.updated", "acme", _sys(status=None, message="x"), T0
    )
    assert still is not None and still.status == "running" and told == []
    gone, _ = apply_system_event(still, "system.event.deleted", "acme", _sys(), T0)
    after, told = apply_system_event(
        gone, "system.event.updated", "acme", _sys(status="running"), T0
    )
    assert after is None and told == []
