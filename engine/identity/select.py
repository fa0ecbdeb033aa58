"""Choosing the one face a reference photo is about, with errors that tell the user what to do."""

from __future__ import annotations

from collections.abc import Sequence

from engine._core.errors import AmbiguousFace, FaceNotFound, InputError

from .types import Face


def describe_faces(faces: Sequence[Face]) -> str:
    return "; ".join(
        f"#{i} box=({f.box[0]:.0f},{f.box[1]:.0f},{f.box[2]:.0f},{f.box[3]:.0f}) score={f.score:.2f}"
        for i, f in enumerate(faces)
    )


def choose_face(faces: Sequence[Face], face_index: int | None, source: str) -> Face:
    """The face to use from `source`: the only one, or `faces[face_index]` when several were found.

    Raises:
        `FaceNotFound`: no face at all.
        `AmbiguousFace`: several faces and no index (the message lists them and asks for `--face N`).
        `InputError`: an index that is out of range.
    """
    if not faces:
        raise FaceNotFound(
            f"no face found in {source}: use a photo where the face is clearly visible, frontal or 3/4, "
            "at least 80 px wide"
        )
    if face_index is None:
        if len(faces) == 1:
            return faces[0]
        raise AmbiguousFace(
            f"{len(faces)} faces found in {source} ({describe_faces(faces)}): choose one with --face N"
        )
    if not 0 <= face_index < len(faces):
        raise InputError(
            f"--face {face_index} is out of range for {source}, which has {len(faces)} face(s): "
            f"use 0..{len(faces) - 1} ({describe_faces(faces)})"
        )
    return faces[face_index]
