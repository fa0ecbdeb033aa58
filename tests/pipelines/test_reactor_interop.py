"""ReActor interop on a real ArcFace embedding (the tiny buffalo_l twin): the export loads back, through a
re-implementation of what ComfyUI-ReActor does with a face model file, to the same embedding; the import gives a
character that scores like the original; and the CLI round trip."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from engine.characters import create_character, identity_reference, reembed
from engine.characters.reactor import export_reactor, import_reactor
from engine.identity.registry import get_analyzer

ARC = "tiny-arcface-buffalo_l-w600k_r50"
REACTOR_FIELDS = (
    "bbox",
    "kps",
    "det_score",
    "landmark_3d_68",
    "pose",
    "landmark_2d_106",
    "embedding",
    "gender",
    "age",
)


class ReActorFace(dict):
    """ReActor's `Face` (reactor_core/face_objects.py; insightface.app.common.Face before it): a dict whose keys are
    attributes, `normed_embedding` = embedding / its L2 norm, `sex` from `gender`. A missing attribute raises."""

    def __init__(self, d=None, **kwargs):
        d = {**(d or {}), **kwargs}
        for k, v in d.items():
            setattr(self, k, v)
        super().__init__(d)

    def __setattr__(self, name, value):
        value = value.copy() if isinstance(value, np.ndarray) else value
        super().__setattr__(name, value)
        super().__setitem__(name, value)

    @property
    def normed_embedding(self):
        e = self.get("embedding")
        n = np.linalg.norm(e)
        return e if n == 0 else e / n

    @property
    def sex(self):
        return None if self.get("gender") is None else ("M" if self.get("gender") == 1 else "F")


def reactor_load_face_model(path) -> ReActorFace:
    """reactor_utils.load_face_model: every tensor through `safe_open(framework="pt")` and `.numpy()`, into a Face."""
    from safetensors import safe_open

    face = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            face[k] = f.get_tensor(k).numpy()
    return ReActorFace(face)


def reactor_save_face_model(face: ReActorFace, path) -> None:
    """reactor_utils.save_face_model: `torch.tensor(face[k])` of the nine fields, `save_file`."""
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.tensor(face[k]) for k in REACTOR_FIELDS}, str(path))


def reactor_swap_latent(face_model: ReActorFace) -> np.ndarray:
    """What swap_face does with a loaded model: pick the largest by `bbox` area, then inswapper's input is its
    `normed_embedding` as a (1, 512) row (reactor_swapper.py `swap_face`, face_models.py `INSwapper.get`)."""
    source = sorted([face_model], key=lambda x: (x.bbox[2] - x.bbox[0]) * (x.bbox[3] - x.bbox[1]), reverse=True)[0]
    return source.normed_embedding.reshape((1, -1))


def reactor_blend(faces: list[ReActorFace]) -> ReActorFace:
    """nodes.py BuildFaceModel.blend_faces ("Mean") over loaded face models: mean of the raw embeddings, the other
    eight fields from the first face, read as attributes."""
    f0 = faces[0]
    return ReActorFace(
        bbox=f0.bbox, kps=f0.kps, det_score=f0.det_score, landmark_3d_68=f0.landmark_3d_68, pose=f0.pose,
        landmark_2d_106=f0.landmark_2d_106, embedding=np.mean([f.embedding for f in faces], axis=0),
        gender=f0.gender, age=f0.age,
    )  # fmt: skip


@pytest.fixture(scope="module")
def arc(tiny_settings):
    return get_analyzer(ARC, settings=tiny_settings)


@pytest.fixture(scope="module")
def character(arc, faces_dir):
    ch = create_character("ava", [faces_dir / "obama.jpg", (faces_dir / "obama2.jpg", 2.0)], None, get_analyzer())
    return reembed(ch, arc)


def test_export_loads_back_through_reactors_loader_to_the_same_embedding(character, arc, tmp_path):
    out = export_reactor(character, tmp_path / "ava.safetensors", encoder_id=ARC)
    face = reactor_load_face_model(out)
    assert sorted(face) == sorted(REACTOR_FIELDS)
    for k, (dtype, shape) in {
        "bbox": ("float32", (4,)), "kps": ("float32", (5, 2)), "det_score": ("float32", ()),
        "landmark_3d_68": ("float32", (68, 3)), "pose": ("float32", (3,)), "landmark_2d_106": ("float32", (106, 2)),
        "embedding": ("float32", (512,)), "gender": ("int64", ()), "age": ("int64", ()),
    }.items():  # fmt: skip
        assert (str(face[k].dtype), face[k].shape) == (dtype, shape), k
    emb = character.embeddings[ARC]
    latent = reactor_swap_latent(face)
    assert latent.shape == (1, 512) and np.allclose(latent[0], emb.vector, atol=1e-6)
    # the raw scale is the weighted mean norm of the character's own raw ArcFace vectors (what ReActor would store)
    norms = [np.linalg.norm(v) for v in emb.per_reference]
    weights = [r.weight for r in character.references]
    assert np.linalg.norm(face.embedding) == pytest.approx(np.dot(norms, weights) / sum(weights), rel=1e-5)
    ref = character.references[0]
    assert np.allclose(face.bbox, ref.box) and np.allclose(face.kps, ref.kps5)
    assert np.allclose(face.landmark_3d_68[:, :2], ref.landmarks) and not face.landmark_3d_68[:, 2].any()
    # ReActor's blend node reads every field, and its output saves and loads again with the same identity
    blended = reactor_blend([face, reactor_load_face_model(out)])
    reactor_save_face_model(blended, tmp_path / "blended.safetensors")
    again = reactor_load_face_model(tmp_path / "blended.safetensors")
    assert np.allclose(reactor_swap_latent(again)[0], emb.vector, atol=1e-6)
    # and our import reads ReActor's own re-save
    imp = import_reactor(tmp_path / "blended.safetensors", "ava-blended", arc.info)
    assert np.allclose(identity_reference(imp, arc.info).embedding, emb.vector, atol=1e-6)


def test_import_gives_an_embedding_only_character_that_scores_like_the_original(character, arc, faces_dir, tmp_path):
    from engine.identity.images import load_image

    out = export_reactor(character, tmp_path / "ava.safetensors", encoder_id=ARC)
    imp = import_reactor(out, "ava-reactor", arc.info)
    assert imp.references == [] and set(imp.embeddings) == {ARC} and imp.version == 1
    assert imp.embeddings[ARC].model_sha256 == arc.info.model_sha256
    ref = identity_reference(imp, arc.info)
    orig = identity_reference(character, arc.info)
    assert ref.character_id == imp.id and np.allclose(ref.embedding, orig.embedding, atol=1e-6)
    face = max(arc.analyze(load_image(faces_dir / "biden.jpg")), key=lambda f: f.area)
    assert arc.info.distance(face.embedding, ref.embedding) == pytest.approx(
        arc.info.distance(face.embedding, orig.embedding), abs=1e-6
    )


def flx(*args, weights, home):
    env = dict(os.environ, FLX_WEIGHTS_DIR=str(weights), FLX_HOME=str(home), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def one_line_error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def test_cli_export_reactor_then_import_reactor(tiny_weights_dir, faces_dir, tmp_path):
    from engine._core.settings import EngineSettings
    from engine.characters import open_library

    home = tmp_path / "home"
    out = tmp_path / "faces" / "ava.safetensors"
    run = lambda *a: flx(*a, weights=tiny_weights_dir, home=home)
    r = run(
        "character", "create", "ava", "--ref", str(faces_dir / "obama.jpg"), "--ref", str(faces_dir / "obama2.jpg")
    )
    assert r.returncode == 0, r.stderr
    r = run("character", "export-reactor", "ava", str(out))  # only a dlib embedding so far
    assert r.returncode == 2 and "flx character reembed ava --encoder arcface-buffalo_l-w600k_r50" in one_line_error(r)
    assert not out.exists()
    assert run("character", "reembed", "ava", "--encoder", ARC).returncode == 0
    r = run("character", "export-reactor", "ava", str(out), "--encoder", ARC)
    assert r.returncode == 0, r.stderr
    assert "exported" in r.stdout and "ava.safetensors" in r.stdout
    r = run("character", "import-reactor", str(out), "ava-reactor", "--encoder", ARC)
    assert r.returncode == 0, r.stderr
    assert "imported 'ava-reactor'" in r.stdout
    r = run("character", "import-reactor", str(out), "ava-reactor", "--encoder", ARC)  # the name is taken now
    assert r.returncode != 0 and "ava-reactor" in one_line_error(r)
    bad = tmp_path / "face.ipadpt"
    bad.write_bytes(b"\x80\x04K\x01.")
    r = run("character", "import-reactor", str(bad), "other", "--encoder", ARC)
    assert r.returncode == 2 and "face.ipadpt" in one_line_error(r) and "pickle" in r.stderr
    r = run("character", "import-reactor", str(out), "other")  # the real buffalo_l pack is not installed here
    assert r.returncode != 0 and "buffalo_l" in one_line_error(r)

    settings = EngineSettings(home=home, weights_dir=tiny_weights_dir)
    with open_library(settings) as lib:
        orig, imp = lib.get("ava"), lib.get("ava-reactor")
    assert imp.references == [] and imp.version == 1
    assert np.allclose(imp.embeddings[ARC].vector, orig.embeddings[ARC].vector, atol=1e-6)
