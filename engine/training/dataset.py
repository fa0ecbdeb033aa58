"""The training set of a character LoRA: which images, which captions, which augmentations, in which order.

Why each rule:
- Every image must show the character: the identity analyzer finds its face and the embedding distance to the
  character must be under the encoder's same-person threshold. A LoRA trained on a stranger's face (a bad pack
  candidate, a group photo) learns the wrong identity, so those images are listed and skipped, and too few usable
  images is refused rather than overfitted.
- Captions are DreamBooth-style, "photo of <trigger> <class>, <identity clause>": the trigger binds the identity,
  the clause (the profile's words, `engine.prompts.identity_clause`) keeps describable traits in the text so the
  LoRA does not have to bake them in. A `<image stem>.txt` next to a folder image replaces it verbatim.
- Horizontal flips double the data but mirror the face: with a one-sided anchor detail (a mole on the left cheek)
  a flipped image teaches the wrong side, so `flip="auto"` turns them off for such profiles.
- Crops are square, around the face, shifted by up to `crop_jitter` of the side; `augment_variants` crops per
  image are drawn once from a seeded generator and their latents cached (see `trainer.py`), so an epoch costs no
  VAE passes and the data is identical across runs and resumes.
- Data order is a pure function of (seed, sample position): a resume at step k needs no saved iterator state.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine._core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_TRAIN_IMAGES = 1000
MAX_IMAGE_BYTES = 64 * 1024**2  # a training photo; larger files are refused before they are read
MAX_CAPTION_LEN = 1000
_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@dataclass
class TrainImage:
    """One usable training image: RGB uint8, the character's face box in it, its caption and content hash."""

    name: str
    sha256: str
    image: np.ndarray = field(repr=False)
    face_box: tuple[float, float, float, float]
    caption: str
    distance: float | None = None  # to the character's embedding (None for prior images, which are not checked)


@dataclass
class TrainingSet:
    """The usable images, what was skipped and why, and whether flips are used."""

    images: list[TrainImage]
    skipped: list[tuple[str, str]]  # (image name, reason)
    flip: bool
    flip_reason: str
    prior: list[TrainImage] = field(default_factory=list)

    @property
    def sha256s(self) -> list[str]:
        return [im.sha256 for im in self.images]


def flip_allowed(mode: str, profile) -> tuple[bool, str]:
    """(use flips, why). `auto`: off when an anchor detail is on one side (its `side`, or 'left'/'right' in its
    words), since a mirrored image puts it on the wrong side of the face."""
    if mode == "on":
        return True, "flip=on"
    if mode == "off":
        return False, "flip=off"
    for a in getattr(profile, "anchor_details", None) or []:
        if getattr(a, "side", "none") in ("left", "right") or _SIDE_WORDS.search(a.description or ""):
            return False, f"anchor detail '{a.description}' is on one side of the face"
    return True, "no one-sided anchor detail"


def caption_for(profile, trigger: str, class_word: str, templates=None) -> str:
    """`photo of <trigger> <class>, <identity clause>` (the clause left out when the profile is empty)."""
    from engine.prompts import identity_clause, load_prompt_templates

    templates = templates or load_prompt_templates()
    clause = identity_clause(profile, templates.family("sdxl").identity, drop_wardrobe=False) if profile else ""
    head = f"photo of {trigger} {class_word}"
    return f"{head}, {clause}" if clause else head


def _decode(data: bytes, what: str) -> np.ndarray:
    """RGB uint8 of an encoded image, under the same pixel bound as every image the engine reads."""
    import warnings

    from PIL import Image

    from engine.identity.images import DEFAULT_MAX_PIXELS, to_rgb_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.size[0] * im.size[1] > DEFAULT_MAX_PIXELS:
                    raise InputError(f"{what} is {im.size[0]}x{im.size[1]}: downscale it (1024x1024 is enough)")
                im.load()
                return to_rgb_array(im)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{what} is not a readable image ({e}): remove or replace it") from None


def _raw_images(character, source: str) -> list[tuple[str, bytes, str | None]]:
    """(name, encoded bytes, caption override) of the source's images, in a stable order."""
    if source == "pack":
        items = [(f"pack:{p.shot}", p.image_png, None) for p in character.pack if p.image_png]
        if not items:
            raise InputError(
                f"character '{character.name}' has no pack images: run `flx pack {character.name}` first, or train "
                "with --from refs (its reference photos) or --from DIR"
            )
        return items
    if source == "refs":
        items = [(f"ref:{r.source_filename}", r.head_crop, None) for r in character.references if r.head_crop]
        if not items:
            raise InputError(
                f"character '{character.name}' holds no reference crops (exported without references): re-import "
                "it with references, or train with --from DIR"
            )
        return items
    return [(p.name, p.read_bytes(), caption) for p, caption in _folder_items(source)]


def _folder_items(source: str) -> list[tuple[Path, str | None]]:
    """(image path, caption override) of a training folder, every bound checked without reading an image."""
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"training source '{source}' is not 'pack', 'refs' or a folder of images: fix --from")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}): add training photos")
    if len(files) > MAX_TRAIN_IMAGES:
        raise InputError(f"folder '{folder}' holds {len(files)} images: use at most {MAX_TRAIN_IMAGES}")
    for p in files:
        if p.stat().st_size > MAX_IMAGE_BYTES:
            raise InputError(f"training image '{p}' is over {MAX_IMAGE_BYTES >> 20} MiB: downscale or re-encode it")
    return [(p, _caption_file(p.with_suffix(".txt"))) for p in files]


def check_source(character, source: str) -> None:
    """Refuse (one `InputError` line) a training source that holds no images, before any weights load (a folder's
    images are listed and bounded here, not read: the trainer reads them once)."""
    if source in ("pack", "refs"):
        _raw_images(character, source)
    else:
        _folder_items(source)


def _caption_file(path: Path) -> str | None:
    """An editable caption (`<image>.txt`), checked like every prompt: bounded, one line, no control characters."""
    from engine._core.text import check_text

    if not path.is_file():
        return None
    if path.stat().st_size > 4 * MAX_CAPTION_LEN:
        raise InputError(f"caption file '{path}' is too long: keep a caption under {MAX_CAPTION_LEN} characters")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(f"caption file '{path}' is not UTF-8 text: save it as UTF-8") from None
    return check_text(text, f"caption file '{path}'", max_len=MAX_CAPTION_LEN, multiline=False) or None


def build_training_set(character, spec, analyzer, *, templates=None) -> TrainingSet:
    """The usable images of `spec.source` for `character`, checked against its identity with `analyzer`.

    Raises:
        `InputError`: no images in the source, unreadable images, or fewer than `spec.min_images` show the
            character (the message lists how many were found, skipped and needed).
    """
    from engine.characters.service import identity_reference

    info = analyzer.info
    reference = identity_reference(character, info)
    default_caption = caption_for(character.profile, spec.trigger, spec.class_word, templates)
    images, skipped = [], []
    for name, data, caption in _raw_images(character, spec.source):
        img = _decode(data, f"training image '{name}'")
        faces = analyzer.analyze(img) or analyzer.analyze(img, upsample=1)
        if not faces:
            skipped.append((name, "no face found"))
            continue
        dists = [info.distance(reference.embedding, f.embedding) for f in faces]
        best = int(np.argmin(dists))
        if dists[best] >= info.threshold:
            skipped.append((name, f"not {character.name}: distance {dists[best]:.3f} >= {info.threshold:g}"))
            continue
        images.append(
            TrainImage(
                name=name,
                sha256=hashlib.sha256(data).hexdigest(),
                image=img,
                face_box=tuple(float(v) for v in faces[best].box),
                caption=caption or default_caption,
                distance=round(float(dists[best]), 6),
            )
        )
    if len(images) < spec.min_images:
        listed = "; ".join(f"{n}: {why}" for n, why in skipped[:6]) + ("; ..." if len(skipped) > 6 else "")
        raise InputError(
            f"only {len(images)} of {len(images) + len(skipped)} training images show '{character.name}' "
            f"({spec.min_images} needed){': skipped ' + listed if skipped else ''}: add photos of the character "
            "or lower --min-images"
        )
    flip, why = flip_allowed(spec.flip, character.profile)
    prior = _prior_images(spec) if spec.prior_dir is not None else []
    return TrainingSet(images=images, skipped=skipped, flip=flip, flip_reason=why, prior=prior)


def _prior_images(spec) -> list[TrainImage]:
    """Class images for prior preservation: whole images (centre face box), captioned 'photo of a <class>'."""
    folder = Path(spec.prior_dir)
    if not folder.is_dir():
        raise InputError(f"prior_dir '{folder}' is not a folder: give a folder of class images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"prior_dir '{folder}' holds no images: add class images or drop --prior-dir")
    out = []
    for p in files[:MAX_TRAIN_IMAGES]:
        data = p.read_bytes()
        img = _decode(data, f"prior image '{p.name}'")
        h, w = img.shape[:2]
        out.append(TrainImage(p.name, hashlib.sha256(data).hexdigest(), img, (0.0, 0.0, float(w), float(h)),
                              f"photo of a {spec.class_word}"))  # fmt: skip
    return out


def crop_variants(
    item: TrainImage, resolution: int, count: int, jitter: float, generator
) -> list[tuple[int, int, int]]:
    """`count` square crops (x0, y0, side) around the face, the first centred, the rest shifted by up to `jitter`
    of the side (drawn from the torch `generator`). The side is the image's short side, so the whole head fits."""
    import torch

    h, w = item.image.shape[:2]
    side = min(h, w)
    x0, y0, x1, y1 = item.face_box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out = []
    for k in range(count):
        dx, dy = (0.0, 0.0) if k == 0 else ((torch.rand(2, generator=generator) * 2 - 1) * jitter * side).tolist()
        left = int(round(min(max(cx + dx - side / 2, 0), w - side)))
        top = int(round(min(max(cy + dy - side / 2, 0), h - side)))
        out.append((left, top, side))
    return out


def render_crop(item: TrainImage, crop: tuple[int, int, int], resolution: int, flip: bool):
    """The crop resized to `resolution` as a (3, R, R) float tensor in [-1, 1] (the VAE's input range)."""
    import torch
    from PIL import Image

    left, top, side = crop
    im = Image.fromarray(item.image[top : top + side, left : left + side])
    im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


@dataclass(frozen=True)
class Sample:
    """One cached training example: which image, which crop, flipped or not."""

    image: int
    crop: tuple[int, int, int]
    flip: bool


def plan_samples(tset_images: list[TrainImage], resolution: int, spec, flip: bool) -> list[Sample]:
    """Every (image, crop, flip) example, drawn once from `spec.seed`: `augment_variants` crops per image (the
    first centred), each also mirrored when flips are on."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    out = []
    for i, item in enumerate(tset_images):
        for crop in crop_variants(item, resolution, spec.augment_variants, spec.crop_jitter, g):
            out.append(Sample(i, crop, False))
            if flip:
                out.append(Sample(i, crop, True))
    return out


def sample_order(position: int, count: int, n: int, seed: int, *, cache: dict | None = None) -> list[int]:
    """Sample indices for stream positions [position, position + count): epoch e is a permutation of range(n) seeded
    by (seed, e), so the order is a pure function of the position (resume needs no iterator state). `cache` keeps
    the permutations between calls (keyed by (n, seed, epoch))."""
    import torch

    out = []
    cache = {} if cache is None else cache
    for p in range(position, position + count):
        epoch, k = divmod(p, n)
        key = (n, seed, epoch)
        if key not in cache:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            cache[key] = torch.randperm(n, generator=g).tolist()
        out.append(cache[key][k])
    return out


__all__ = [
    "Sample",
    "TrainImage",
    "TrainingSet",
    "build_training_set",
    "caption_for",
    "crop_variants",
    "flip_allowed",
    "plan_samples",
    "render_crop",
    "sample_order",
]
