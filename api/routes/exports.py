"""Finance only: a month's tables as Arrow record batches, for `metering export` to write as
Parquet or CSV (the read model's connection may not write files itself)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from api.deps import Service, fresh
from api.responses import month_param
from api.routes.finance import finance
from readmodel import exports

router = APIRouter(dependencies=[Depends(finance)])
ARROW_STREAM = "application/vnd.apache.arrow.stream"


class _Chunks(io.RawIOBase):
    """What the Arrow writer wrote since it was last taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


@router.get("/v1/exports/{month}/{table}")
async def export(month: str, table: str, request: Request, service: Service) -> Response:
    """The rows of `table` (see `readmodel.exports.TABLES`) for `month`, as an Arrow IPC
    stream, in a fixed order; streamed, so a month of raw events is never held whole."""
    month = month_param(month)
    if table not in exports.TABLES:
        raise HTTPException(404, f"no export table {table!r}; one of {', '.join(exports.TABLES)}")
    await fresh(request)
    usage_topic = service.settings.topics.usage

    def stream() -> Iterator[bytes]:
        # Starlette runs this in a worker thread, one batch at a time; the cursor lives as
        # long as the answer is being sent.
        with service.cursor() as cur:
            batches = exports.reader(cur, table, month, usage_topic)
            sink = _Chunks()
            with pa.ipc.new_stream(sink, batches.schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
                    yield sink.take()
            yield sink.take()

    return StreamingResponse(stream(), media_type=ARROW_STREAM)
