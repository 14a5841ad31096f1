"""One `APIRouter` per area of the HTTP API; `api.app.create_api` mounts them.

- `health`: liveness and readiness;
- `ingest`: CloudEvents in, produced to Kafka;
- `invoices`: a month's invoice lines, and the preview of the next close;
- `tenants`: a tenant's usage, licences and system events, and threshold crossings;
- `finance`: finance only: the audit of a month, re-rating a closed month, read-only SQL;
- `exports`: finance only: a month's tables as Arrow streams, for `metering export`;
- `webhooks`: webhook subscriptions (finance, or a tenant for its own) and their delivery log.
"""
