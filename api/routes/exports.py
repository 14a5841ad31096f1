"""Finance only: a month's tables as Arrow record batches, for `metering export` to write as
Parquet or CSV (the read model's connection may not write files itself)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator

import duckdb
import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from api.deps import Service, fresh
from api.responses import month_param
from api.routes.finance import finance
from api.service import ReadModelService
from readmodel import exports
from readmodel.store import Closing
from streams.projector import Stream

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


def _open(service: ReadModelService, table: str, month: str) -> tuple[contextlib.ExitStack, Stream]:
    """The cursor and the stream of the answer, opened before any of it is sent, so that a
    read model being replaced or a failing query is a status, not a cut stream. The
    projector closes the stream itself if it closes first (a replace)."""
    held = contextlib.ExitStack()
    try:
        cur = held.enter_context(service.cursor())
        batches = exports.reader(cur, table, month, service.settings.topics.usage)
        projector = service.projector
        if projector is None:
            raise Closing("the read model is being replaced")
        stream = held.enter_context(projector.stream(batches))
    except BaseException:
        held.close()
        raise
    return held, stream


@router.get("/v1/exports/{month}/{table}")
async def export(month: str, table: str, request: Request, service: Service) -> Response:
    """The rows of `table` (see `readmodel.exports.TABLES`) for `month`, as an Arrow IPC
    stream, in a fixed order; streamed, so a month of raw events is never held whole."""
    month = month_param(month)
    if table not in exports.TABLES:
        raise HTTPException(404, f"no export table {table!r}; one of {', '.join(exports.TABLES)}")
    await fresh(request)
    try:
        held, stream = await asyncio.to_thread(_open, service, table, month)
    except (Closing, RuntimeError) as exc:
        raise HTTPException(503, f"the read model is not available: {exc}") from None
    except duckdb.Error as exc:
        raise HTTPException(500, f"the export query failed: {exc}") from None

    def body() -> Iterator[bytes]:
        # Starlette runs this in worker threads, one batch at a time.
        with held:
            sink = _Chunks()
            with pa.ipc.new_stream(sink, stream.batches.schema) as writer:
                while (batch := stream.next()) is not None:
                    writer.write_batch(batch)
                    yield sink.take()
            yield sink.take()

    return StreamingResponse(body(), media_type=ARROW_STREAM)
