"""One `APIRouter` per area of the HTTP API; `api.app.create_api` mounts them.

- `health`: liveness and readiness;
- `ingest`: CloudEvents in, produced to Kafka;
- `invoices`: a month's invoice lines;
- `tenants`: a tenant's usage, licences and system events, and threshold crossings;
- `finance`: finance only: the audit of a month, and read-only SQL;
- `webhooks`: webhook subscriptions (finance, or a tenant for its own) and their delivery log.
"""
