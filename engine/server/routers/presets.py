"""/api/presets: the presets this server can render (for the job form)."""

from fastapi import APIRouter, Request

from ..deps import ServerLimits, server_state


def build(limits: ServerLimits) -> APIRouter:
    router = APIRouter(prefix="/api/presets", tags=["presets"], max_body_size=limits.max_json_bytes)

    @router.get("", summary="Presets: name, kind (still or video), pipeline, identity conditioning")
    def list_presets(request: Request) -> list[dict]:
        return server_state(request).engine.presets()

    return router
