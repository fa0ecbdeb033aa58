"""A contact sheet of a character's reference crops: what the engine will hold the face to, at a glance."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from engine._core.atomic import atomic_path

from .schema import Character
from .service import decode_image

STATUS_COLOUR = {"pass": (40, 150, 60), "warn": (220, 150, 0), "fail": (200, 40, 40), None: (120, 120, 120)}


def write_reference_sheet(character: Character, path: str | Path, *, tile: int = 256) -> Path:
    """One column per reference: head-and-shoulders crop, aligned 112x112 crop, file name, weight, quality."""
    font = ImageFont.load_default(size=14)
    refs = character.references
    label_h = 64
    cols = max(len(refs), 1)
    sheet = Image.new("RGB", (cols * (tile + 16) + 16, tile + tile // 2 + label_h + 56), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (16, 10),
        f"{character.name}  v{character.version}  ({character.id[:8]})  "
        f"encoders: {', '.join(sorted(character.embeddings)) or 'none'}",
        fill="black",
        font=font,
    )
    for i, ref in enumerate(refs):
        x, y = 16 + i * (tile + 16), 36
        status = (ref.quality or {}).get("status")
        colour = STATUS_COLOUR.get(status, STATUS_COLOUR[None])
        if ref.head_crop:
            head = decode_image(ref.head_crop, f"head crop of {ref.source_filename}")
            sheet.paste(Image.fromarray(head).resize((tile, tile)), (x, y))
        if ref.aligned_png:
            aligned = decode_image(ref.aligned_png, f"aligned crop of {ref.source_filename}")
            sheet.paste(Image.fromarray(aligned).resize((tile // 2, tile // 2)), (x, y + tile + 4))
        draw.rectangle((x - 2, y - 2, x + tile + 1, y + tile + 1), outline=colour, width=3)
        lx = x + tile // 2 + 8
        draw.text((lx, y + tile + 8), ref.source_filename[:24], fill="black", font=font)
        draw.text((lx, y + tile + 28), f"weight {ref.weight:g}  yaw {ref.pose.yaw:+.0f}", fill="black", font=font)
        draw.text((lx, y + tile + 48), f"quality: {status or 'n/a'}", fill=colour, font=font)
        if not ref.head_crop and not ref.aligned_png:
            draw.text((x + 8, y + tile // 2), "(references not included)", fill="grey", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
