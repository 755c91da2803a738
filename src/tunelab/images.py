"""Reading a record's image: a path relative to the data file, bytes, a data URI, a ``{"bytes"|"path": ...}`` dict
as datasets stores images, or a PIL image; always returned as 8-bit RGB.

Images that are not plain RGB are converted the way a viewer shows them: transparency is laid on white, CMYK and
palette images are converted, 16- and 32-bit and float greyscale are scaled from their own range to 0-255 (a plain
``convert("RGB")`` would clip a 16-bit image to white). Remote URLs are refused: tunelab reads local files only. A
missing file, a file that is not an image and a truncated image are errors naming the record and the path.

Example:
    >>> from PIL import Image
    >>> read_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), Path("."), "row 0").getpixel((0, 0))
    (255, 255, 255)
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

MAX_PIXELS = 100_000_000  # larger images are refused (decompression bombs); PIL's own limit is ~89M with a warning


def read_image(value: Any, base: Path, where: str) -> Any:
    """The record's image as an 8-bit RGB ``PIL.Image``.

    Args:
        value: a path (relative to ``base``), bytes, a ``data:image/...;base64,`` string, a dict with ``bytes`` or
            ``path`` (datasets' Image feature), or a ``PIL.Image``.
        base: the folder relative paths start from (the data file's).
        where: the record and column, for error messages.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return to_rgb(value, where)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return read_image(value["bytes"], base, where)
        if value.get("path"):
            return read_image(value["path"], base, where)
        raise DataError(f"{where}: an image dict needs 'bytes' or 'path', got keys {sorted(value)}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(value))
        shown = f"the {len(value)} bytes given"
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.startswith("data:"):
            return read_image(decode_data_uri(text, where), base, where)
        path = local_file(text, base, where, "image")
        source, shown = path, str(path)
    else:
        raise DataError(f"{where}: no image (expected a file path, bytes or a data URI, got {value!r})")
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DataError(f"{where}: {shown} is {image.width}x{image.height} pixels, over the "
                                f"{MAX_PIXELS:,}-pixel limit")
            image.load()  # decode now: a truncated file fails here, not in the middle of training
            return to_rgb(image, where)
    except Image.DecompressionBombError as err:  # PIL refuses images far over its pixel limit before we look
        raise DataError(f"{where}: {shown} is too large to decode safely: {err}") from None
    except UnidentifiedImageError:
        raise DataError(f"{where}: {shown} is not an image PIL can read (JPEG, PNG, GIF, BMP, TIFF, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{where}: {shown} is damaged or truncated: {err}") from None


def local_file(text: str, base: Path, where: str, kind: str) -> Path:
    """The existing local file ``text`` names (relative to ``base``); a URL or a missing file is a DataError.

    Args:
        text: the path as written in the record.
        base: the folder relative paths start from (the data file's).
        where: the record and column, for error messages.
        kind: what the file holds (``image``, ``audio``), for error messages.
    """
    if "://" in text:
        raise DataError(f"{where}: {text!r} is a URL; tunelab reads local {kind} files only (offline): download it "
                        "and give the file's path")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise DataError(f"{where}: {kind} file {path} does not exist")
    return path


def decode_data_uri(text: str, where: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URI."""
    head, _, payload = text.partition(",")
    if not head.endswith(";base64") or not payload:
        raise DataError(f"{where}: expected a base64 data URI (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{where}: the data URI's base64 payload is not valid base64") from None


def to_rgb(image: Any, where: str) -> Any:
    """An 8-bit RGB copy of ``image``: alpha over white, CMYK/palette/greyscale converted, 16/32-bit rescaled."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if not np.isfinite(low) or not np.isfinite(high):
            raise DataError(f"{where}: the image holds NaN or infinite values")
        scaled = np.zeros_like(pixels) if high == low else (pixels - low) / (high - low) * 255.0
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image.copy()
