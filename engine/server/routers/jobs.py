"""/api/jobs: submit a job document (the job-file schema), list, status, cancel, live progress (server-sent events).

Jobs go into the same SQLite queue as `flx batch`; the server's one worker process (`flx batch worker`) runs them,
so a restart of the server resumes queued and interrupted work.
"""

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from .. import views
from ..deps import ServerLimits, check_word, client_of, job_for_server, server_state

TERMINAL = ("done", "failed", "cancelled")
POLL_S = 0.5


def batch_ref(batch_id: Annotated[str, Path(max_length=64, description="Batch id (or job name).")]) -> str:
    return check_word(batch_id, "batch id")


Batch = Annotated[str, Depends(batch_ref)]


def build(limits: ServerLimits) -> APIRouter:
    router = APIRouter(prefix="/api/jobs", tags=["jobs"], max_body_size=limits.max_json_bytes)

    @router.post("", status_code=201, summary="Submit a job document", max_body_size=limits.max_json_bytes)
    def submit(
        request: Request,
        document: Annotated[dict[str, Any], Body(description="A job document (name, characters, defaults, shots).")],
    ) -> JSONResponse:
        state = server_state(request)
        job, out_dir = job_for_server(document, state.outputs_root, state.engine)
        store = state.store()
        batch_id = store.submit(job, out_dir=out_dir, source=f"http:{client_of(request)}")
        return JSONResponse(views.batch(store.batch(batch_id)), status_code=201)

    @router.get("", summary="List batches (newest first)")
    def list_batches(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        return [views.batch(b) for b in server_state(request).store().batches(limit=limit)]

    @router.get("/{batch_id}", summary="A batch with its shots")
    def show_batch(request: Request, batch_id: Batch) -> dict:
        return views.batch(server_state(request).store().batch(batch_id))

    @router.post("/{batch_id}/cancel", summary="Cancel a batch (finished shots are kept)")
    def cancel_batch(request: Request, batch_id: Batch) -> dict:
        return views.batch(server_state(request).store().cancel(batch_id))

    @router.get("/{batch_id}/events", summary="Live progress (text/event-stream: `progress` events, then `end`)")
    async def batch_events(request: Request, batch_id: Batch):
        import anyio
        from sse_starlette import EventSourceResponse

        state = server_state(request)
        # the store is opened per thread: every call runs in the worker thread that owns its connection
        first = await anyio.to_thread.run_sync(lambda: state.store().batch(batch_id))  # 404 before the stream

        async def stream():
            cursor, info = first.seq, first
            while True:
                if info is not None:
                    done = info.status in TERMINAL
                    yield {"event": "end" if done else "progress", "data": json.dumps(views.batch(info))}
                    if done:
                        return
                if await request.is_disconnected():
                    return
                await anyio.sleep(POLL_S)
                cursor, info = await anyio.to_thread.run_sync(lambda c=cursor: state.store().events_since(first.id, c))

        return EventSourceResponse(stream(), ping=15)

    return router
