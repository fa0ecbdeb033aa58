"""/api/outputs: the files of finished shots (from each batch's manifest.json), with metadata and scores."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse

from .. import views
from ..deps import ServerLimits, check_word, output_file, server_state
from .jobs import batch_ref


def build(limits: ServerLimits) -> APIRouter:
    router = APIRouter(prefix="/api/outputs", tags=["outputs"], max_body_size=limits.max_json_bytes)

    @router.get("", summary="Output files of one batch (?job=ID) or of the latest batches")
    def list_outputs(
        request: Request,
        job: Annotated[str | None, Query(max_length=64, description="Batch id or job name.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict]:
        store = server_state(request).store()
        infos = [store.batch(check_word(job, "job"))] if job else store.batches(limit=limit)
        return [row for info in infos for row in views.outputs(info, views.read_manifest(info.out_dir))]

    @router.get("/{batch_id}/{path:path}", summary="Download one output file", response_class=FileResponse)
    def download_output(
        request: Request,
        batch_id: Annotated[str, Depends(batch_ref)],
        path: Annotated[str, Path(max_length=1024, description="The path listed by GET /api/outputs.")],
    ) -> FileResponse:
        file = output_file(server_state(request).store().batch(batch_id).out_dir, path)
        return FileResponse(file, media_type=views.media_type(file))

    return router
