"""Reading user images into the one array layout every face backend takes: RGB uint8 (H, W, 3).

Photos arrive in every format a phone or editor writes (EXIF-rotated JPEG, RGBA / palette /
16-bit PNG, WebP, greyscale). Normalising them here keeps the backends simple, and turns every
unreadable file into one `InputError` line instead of a PIL traceback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine._core.errors import InputError

# PIL's own default (about 89 megapixels, a 9500 x 9500 photo); larger files are refused as possible
# decompression bombs rather than decoded into gigabytes of memory.
DEFAULT_MAX_PIXELS = 89_478_485

_FIX = "use a JPEG, PNG or WebP photo"


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3), upright per its EXIF orientation.

    Args:
        path (`str` or `os.PathLike`):
            The image file (JPEG, PNG, WebP, or anything else PIL reads).
        max_pixels (`int`, *optional*, defaults to `DEFAULT_MAX_PIXELS`):
            Refuse larger images (decompression-bomb guard).

    Raises:
        `InputError`: missing, unreadable, truncated, non-image or oversized file (one line naming it and the fix).

    Examples:
        ```py
        >>> img = load_image("obama.jpg")
        >>> img.shape, img.dtype
        ((1137, 910, 3), dtype('uint8'))
        ```
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}: check the path")
    if not p.is_file():
        raise InputError(f"not a file: {p}: give the path of an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(
                        f"image too large: {p} is {w}x{h} ({w * h / 1e6:.0f} MP, limit {max_pixels / 1e6:.0f} MP): "
                        "downscale it (a 1024x1024 reference is enough)"
                    )
                im.load()
                return to_rgb_array(ImageOps.exif_transpose(im))
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image too large: {p} exceeds the decompression-bomb limit: downscale it") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image (or an unsupported format): {p}: {_FIX}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data; PIL raises all three
        raise InputError(f"cannot read image {p} ({e}): the file is damaged or truncated, {_FIX}") from None


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Convert a PIL image or an array (e.g. a decoded video frame) to RGB uint8 (H, W, 3).

    HxWx3 uint8 arrays are returned as they are (made contiguous). Transparency is composited on white,
    16-bit and float data are rescaled to 8 bits, greyscale is repeated to three channels. No EXIF
    handling here: `load_image` does that for files.
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image or a numpy array, got {type(image).__name__}: pass image data")
    im = image
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")  # palette (possibly with a transparent index)
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        return _composite_on_white(im.convert("RGBA"))
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(im), sixteen_bit=im.mode.startswith("I;16"))
    if im.mode != "RGB":
        im = im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _composite_on_white(im: Image.Image) -> np.ndarray:
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return np.ascontiguousarray(np.asarray(Image.alpha_composite(white, im).convert("RGB")))


def _array_to_rgb(arr: np.ndarray, *, sixteen_bit: bool = False) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InputError(f"image array has shape {arr.shape}: expected (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey")
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr, sixteen_bit=sixteen_bit)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        return _composite_on_white(Image.fromarray(np.ascontiguousarray(arr), "RGBA"))
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray, *, sixteen_bit: bool) -> np.ndarray:
    """Rescale integer (16/32-bit) or float data to 0-255."""
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        peak = float(np.nanmax(a)) if a.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0  # floats in [0, 1] or already in [0, 255]
        return np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        a = arr.astype(np.int64)
        if arr.dtype == np.bool_:
            return (a * 255).astype(np.uint8)
        if sixteen_bit or arr.dtype in (np.uint16, np.int16) or (a.size and a.max() > 255):
            return np.clip((a + 128) // 257, 0, 255).astype(np.uint8)  # 0-65535 -> 0-255
        return np.clip(a, 0, 255).astype(np.uint8)
    raise InputError(f"unsupported image data type {arr.dtype}: use 8- or 16-bit images")
