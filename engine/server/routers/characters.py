"""/api/characters: the library (list, show, create from photos, add references, variants, export/import, delete).

Each route: typed parameters, the checks of `deps` where the input enters, one `engine.characters` call, a view.
Calls that analyse photos or change the library hold the server's write lock (the Engine's analyzers are shared).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from engine._core.text import MAX_LABEL_LEN, MAX_TEXT_LEN, check_text

from .. import views
from ..deps import (
    ServerLimits,
    check_ref,
    check_word,
    parse_profile,
    photo_files,
    read_flx_upload,
    read_photos,
    server_state,
)


def character_ref(ref: Annotated[str, Path(max_length=200, description="Character name or id.")]) -> str:
    return check_ref(ref, "character")


def _search(value: str | None, what: str) -> str | None:
    return None if value is None else check_text(value, what, max_len=200, multiline=False)


class VariantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Name of the new variant.")
    wardrobe: str | None = Field(None, max_length=MAX_LABEL_LEN, description="Outfit for this variant.")
    notes: str | None = Field(None, max_length=MAX_TEXT_LEN, description="Notes for this variant.")


Ref = Annotated[str, Depends(character_ref)]
Photos = Annotated[list[UploadFile], File(description="PNG, JPEG or WebP photos (type checked by content).")]
Face = Annotated[int | None, Form(ge=0, le=1000, description="Which face to use in photos that show several.")]
Force = Annotated[bool, Form(description="Keep references that look like a different person.")]
Encoder = Annotated[str | None, Form(max_length=200, description="Identity encoder id (default dlib-resnet-v1).")]


def build(limits: ServerLimits) -> APIRouter:
    router = APIRouter(prefix="/api/characters", tags=["characters"], max_body_size=limits.max_json_bytes)
    photo_form = {"max_files": limits.max_photos * 4, "max_fields": 16, "max_part_size": limits.max_text_field_bytes}

    @router.get("", summary="List characters")
    def list_characters(
        request: Request,
        search: Annotated[str | None, Query(max_length=200)] = None,
        tag: Annotated[str | None, Query(max_length=200)] = None,
    ) -> list[dict]:
        state = server_state(request)
        rows = state.engine.characters.list(search=_search(search, "search"), tag=_search(tag, "tag"))
        return [views.character_row(s, state.list_extras(s)) for s in rows]

    @router.get("/{ref}", summary="Show a character")
    def show_character(request: Request, ref: Ref) -> dict:
        chars = server_state(request).engine.characters
        ch = chars.get(ref)
        return views.character_detail(ch, chars.log(ch.id))

    @router.get("/{ref}/references/{index}.png", summary="A reference crop", response_class=Response)
    def reference_image(request: Request, ref: Ref, index: Annotated[int, Path(ge=0, le=1000)]) -> Response:
        data, media = views.reference_image(server_state(request).engine.characters.get(ref), index)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=60"})

    @router.get("/{ref}/pack.png", summary="The pack contact sheet", response_class=Response)
    def pack_sheet(request: Request, ref: Ref) -> Response:
        return Response(views.pack_sheet(server_state(request).engine.characters.get(ref)), media_type="image/png")

    @router.post(
        "", status_code=201, summary="Create a character from photos",
        max_body_size=limits.photos_body, form_limits=photo_form,
    )  # fmt: skip
    def create_character(
        request: Request,
        name: Annotated[str, Form(max_length=200, description="Library name.")],
        photos: Photos,
        profile: Annotated[str | None, Form(description="Profile as YAML or JSON text.")] = None,
        face: Face = None,
        force: Force = False,
        encoder: Encoder = None,
    ) -> JSONResponse:
        state = server_state(request)
        name = check_ref(name, "character name")
        enc = check_word(encoder, "encoder") if encoder else None
        prof, checked = parse_profile(profile), read_photos(photos, state.limits)
        with state.write_lock, photo_files(checked) as paths:
            ch = state.engine.characters.create(name, paths, face=face, profile=prof, encoder=enc, force=force)
        return JSONResponse(views.character_detail(ch, state.engine.characters.log(ch.id)), status_code=201)

    @router.post(
        "/{ref}/references", summary="Add reference photos (a new version)",
        max_body_size=limits.photos_body, form_limits=photo_form,
    )  # fmt: skip
    def add_references(request: Request, ref: Ref, photos: Photos, face: Face = None, force: Force = False) -> dict:
        state = server_state(request)
        checked = read_photos(photos, state.limits)
        with state.write_lock, photo_files(checked) as paths:
            ch = state.engine.characters.add_references(ref, paths, face=face, force=force)
        return views.character_detail(ch, state.engine.characters.log(ch.id))

    @router.post("/{ref}/variants", status_code=201, summary="Make a variant (same identity, new wardrobe/notes)")
    def make_variant(request: Request, ref: Ref, body: VariantRequest) -> JSONResponse:
        state = server_state(request)
        name = check_ref(body.name, "variant name")
        with state.write_lock:
            ch = state.engine.characters.variant(ref, name, wardrobe=body.wardrobe, notes=body.notes)
        return JSONResponse(views.character_detail(ch, state.engine.characters.log(ch.id)), status_code=201)

    @router.get("/{ref}/export", summary="Download the .flx file", response_class=Response)
    def export_character(
        request: Request, ref: Ref, references: Annotated[bool, Query(description="Include reference crops.")] = True
    ) -> Response:
        from engine.characters.library import slug

        chars = server_state(request).engine.characters
        s = chars.summary(ref)
        data = chars.export_bytes(s.id, include_references=references)
        disposition = f'attachment; filename="{slug(s.name)}-v{s.latest_version}.flx"'
        return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": disposition})

    @router.post(
        "/import", summary="Import a .flx file (verified first; nothing stored when invalid)",
        max_body_size=limits.flx_body, form_limits={"max_files": 1, "max_fields": 0},
    )  # fmt: skip
    def import_character(request: Request, file: Annotated[UploadFile, File(description="A .flx file.")]) -> dict:
        state = server_state(request)
        data, name = read_flx_upload(file, state.limits)
        with state.write_lock:
            return views.import_result(state.engine.characters.import_bytes(data, source=name))

    @router.delete("/{ref}", summary="Delete a character and all its versions")
    def delete_character(request: Request, ref: Ref) -> dict:
        state = server_state(request)
        with state.write_lock:
            return {"deleted": state.engine.characters.delete(ref).id}

    return router
