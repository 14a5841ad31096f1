"""Webhook subscriptions: `POST/GET/DELETE /v1/webhooks`, `GET /v1/webhooks/{id}/deliveries`.

Finance subscribes to any tenant's notices (or every tenant's); a tenant key only to its own,
and sees only its own subscriptions (another's answers 404). A subscription is a record in
the compacted `webhook-subscriptions` topic; its signing secret is derived from the signing
key and shown once, in the answer to the POST."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from api.auth import Principal, require
from api.deps import Caller, Service, caller, fresh
from api.responses import json_response
from notify.endpoints import RefusedEndpoint, check_url
from notify.signing import signing_key, subscription_secret
from readmodel import webhooks
from schemas.webhooks import NewWebhook, WebhookSubscription

router = APIRouter(dependencies=[Depends(caller)])


def _owner(principal: Principal) -> str | None:
    """Whose subscriptions the caller sees; None: everyone's."""
    require(principal, "finance", "tenant")
    return f"tenant:{principal.tenant}" if principal.role == "tenant" else None


async def _publish(request: Request, subscription: WebhookSubscription) -> None:
    settings = request.app.state.service.settings
    producer = await request.app.state.ingestor.producer()
    await producer.send_and_wait(
        settings.topics.subscriptions,
        subscription.model_dump_json().encode(),
        key=subscription.id.encode(),
    )


async def _visible(
    request: Request, service: Any, principal: Principal, id_: str
) -> dict[str, Any]:
    owner = _owner(principal)
    await fresh(request)
    found: dict[str, Any] | None = await service.read(webhooks.subscription, id_)
    if found is None or (owner is not None and found["owner"] != owner):
        raise HTTPException(404, f"no webhook subscription {id_!r}")
    return found


@router.post("/v1/webhooks", status_code=201)
async def subscribe(
    body: NewWebhook, request: Request, principal: Caller, service: Service
) -> Response:
    owner = _owner(principal)
    tenant = body.tenant
    if owner is not None:
        if tenant not in (None, principal.tenant):
            raise HTTPException(404, f"no tenant {tenant!r}")
        tenant = principal.tenant
    url = str(body.url)
    try:
        check_url(url, service.settings.webhook_allow_private)
    except RefusedEndpoint as refused:
        raise HTTPException(422, f"url: {refused}") from None
    subscription = WebhookSubscription(
        id=f"wh_{uuid.uuid4().hex}",
        tenant=tenant,
        owner=owner or "finance",
        url=url,
        event_types=tuple(dict.fromkeys(body.event_types)),
        description=body.description,
        created_at=dt.datetime.now(dt.UTC),
    )
    settings = service.settings
    configured = settings.webhook_signing_key
    key = signing_key(configured.get_secret_value() if configured else None, settings.data_dir)
    shown = subscription.model_dump(mode="json", exclude={"deleted_at", "version"})
    shown["secret"] = subscription_secret(key, subscription.id)
    # Published once its secret is known: none exists whose secret nobody saw.
    await _publish(request, subscription)
    return json_response(shown, status=201)


@router.get("/v1/webhooks")
async def list_subscriptions(request: Request, principal: Caller, service: Service) -> Response:
    owner = _owner(principal)
    await fresh(request)
    return json_response({"webhooks": await service.read(webhooks.subscriptions, owner)})


@router.delete("/v1/webhooks/{id_}", status_code=204)
async def unsubscribe(id_: str, request: Request, principal: Caller, service: Service) -> Response:
    found = await _visible(request, service, principal, id_)
    found.update(deleted_at=dt.datetime.now(dt.UTC), version=2)
    await _publish(request, WebhookSubscription.model_validate(found))
    return Response(status_code=204)


@router.get("/v1/webhooks/{id_}/deliveries")
async def delivery_log(
    id_: str,
    request: Request,
    principal: Caller,
    service: Service,
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    await _visible(request, service, principal, id_)
    rows = await service.read(webhooks.deliveries, id_, limit)
    return json_response({"webhook": id_, "deliveries": rows})
