"""The ArcFace backend resolved from the weights store and used to re-embed a character and score against it: the
workstation encoder's path, run here on CPU with the tiny antelopev2 twin under its own encoder id."""

from __future__ import annotations

import numpy as np

from engine.characters import create_character, identity_reference, reembed
from engine.identity.registry import get_analyzer
from engine.scoring import score_frames

ARC = "tiny-arcface-antelopev2-glintr100"


def test_reembed_with_arcface_from_store_and_score(tiny_settings, tiny_store, faces_dir):
    from engine.identity.images import load_image

    arc = get_analyzer(ARC, settings=tiny_settings)
    assert arc.pack_dir == tiny_store.require("tiny-arcface-antelopev2")
    dlib = get_analyzer()
    ch = create_character("arc-test", [faces_dir / "obama.jpg", faces_dir / "obama2.jpg"], None, dlib)
    assert set(ch.embeddings) == {"dlib-resnet-v1"}

    v2 = reembed(ch, arc)
    assert v2.version == ch.version + 1 and set(v2.embeddings) == {"dlib-resnet-v1", ARC}
    emb = v2.embeddings[ARC]
    assert emb.dim == 512 and emb.metric == "cosine" and len(emb.vector) == 512
    # identity of the character is unchanged for the old encoder
    assert np.allclose(v2.embeddings["dlib-resnet-v1"].vector, ch.embeddings["dlib-resnet-v1"].vector)

    ref = identity_reference(v2, arc.info)
    frame = load_image(faces_dir / "obama.jpg")
    report = score_frames([frame], None, ref, arc)
    assert report.encoder.encoder_id == ARC and report.reference.character_id == v2.id
    media = report.media[0]
    assert media.summary.frames_total == 1 and media.summary.detection_rate == 1.0
