"""Reading, writing and finding image files.

`read_image` turns anything Pillow opens into the picture a viewer shows: EXIF orientation applied,
transparency composited onto white, 16-bit scaled to 8-bit, always (H, W, 3) uint8 RGB. Bad files raise
`ImageReadError` naming the file, so a batch can report them and go on.
"""
from __future__ import annotations

import glob
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from personseg.tempfiles import atomic_write

_PILLOW_LIMIT_LOCK = threading.Lock()  # read_image's swap of Image.MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}

# Larger images are refused before decoding (decompression bombs); the environment variable wins.
MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "PERSONSEG_MAX_PIXELS"

# Truncated files must raise, so never set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True in this package.


class ImageReadError(ValueError):
    """A file that is missing, empty, corrupt, truncated, too large or not an image."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def max_pixels() -> int:
    """The pixel limit: `$PERSONSEG_MAX_PIXELS` if set, else `MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None:
        return MAX_PIXELS
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={value!r} is not a number; "
                         "set it to a pixel count such as 200000000") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as displayed: (H, W, 3) uint8 RGB, after EXIF rotation.

    Transparent areas are composited onto white, as viewers show them (the RGB under fully transparent
    pixels is often black or garbage). 16-bit images are scaled (not clipped) to 8 bit; animated files give
    their first frame.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below replaces it
            # Pillow's own check (2 * Image.MAX_IMAGE_PIXELS, 178,956,970) would speak first, with its
            # number and not ours: open the header without it, and apply `limit` before decoding.
            # The swap is of a global: under a lock, or two threads could leave it off for the process.
            with _PILLOW_LIMIT_LOCK:
                pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(path)  # the header only
                finally:
                    Image.MAX_IMAGE_PIXELS = pillow_limit
        with im:
            width, height = im.size
            if width * height > limit:
                raise _too_large(path, width, height, limit)
            im.load()  # decode now, so truncated data raises here
            return _to_rgb(ImageOps.exif_transpose(im))
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"{e}; if you trust the file, raise {MAX_PIXELS_ENV}") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown format or not an image file)") from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        hint = " (truncated file?)" if "truncated" in str(e) else ""
        raise ImageReadError(path, f"not a readable image{hint}: {e}") from None


def _too_large(path: Path, width: int, height: int, limit: int) -> ImageReadError:
    return ImageReadError(
        path,
        f"{width}x{height} = {width * height:,} pixels is over the limit of {limit:,} "
        f"(a decompression bomb?); if you trust the file, set {MAX_PIXELS_ENV}={width * height}",
    )


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.repeat(_to_uint8(np.asarray(im))[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return np.array(im.convert("RGB"))  # writable; also CMYK, YCbCr, 1-bit, L, P


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float samples to 0..255."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if is_float and low >= 0 and high <= 1:
        scale = 1.0  # float image in [0, 1]
    elif low >= 0 and high <= 65535:
        scale = 65535.0  # 16-bit data, also what Pillow gives as mode "I" for 16-bit PNGs
    else:
        values, scale = values - low, max(high - low, 1.0)  # anything else: stretch to the full range
    return np.round(values * (255.0 / scale)).clip(0, 255).astype(np.uint8)


def write_image_atomic(path: str | os.PathLike, image: np.ndarray | Image.Image, overwrite: bool = False) -> Path:
    """Write `image` (format from the extension) via a temporary file in the same folder and `os.replace`,
    so a reader never sees half a file and a failure leaves nothing behind. Creates missing folders."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
    extension = path.suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"{path}: cannot tell the image format from {extension!r}; use .png or .jpg")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    options = {"quality": 95} if image_format == "JPEG" else {}
    with atomic_write(path, overwrite=overwrite) as temp, open(temp, "xb") as f:
        image.save(f, format=image_format, **options)
    return path


def list_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders and glob patterns -> sorted, deduplicated image paths.

    A file named explicitly is kept whatever its extension (reading it reports the problem); folders and
    globs yield only image extensions, skipping hidden files such as macOS `._name.jpg`.
    Raises FileNotFoundError for a path that does not exist or a pattern that matches nothing.
    """
    found: dict[Path, Path] = {}  # resolved -> as given

    def add_folder(folder: Path) -> None:
        for p in folder.rglob("*") if recursive else folder.iterdir():
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
                found.setdefault(p.resolve(), p)

    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.setdefault(path.resolve(), path)
        elif path.is_dir():
            add_folder(path)
        elif glob.has_magic(item):  # the shell did not expand it (quoted, or Windows)
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=recursive))]
            if not matches:
                raise FileNotFoundError(f"{item}: no files match this pattern")
            for m in matches:
                if m.is_dir():
                    add_folder(m)
                elif m.suffix.lower() in IMAGE_EXTENSIONS:
                    found.setdefault(m.resolve(), m)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder (check the path, or quote a glob pattern)")
    return sorted(found.values(), key=lambda p: str(p))
