"""Safe image loading: size limit, EXIF orientation, any colour mode to RGB, resize/crop/normalise to a tensor.

Only regular files are read (a FIFO, a device such as ``/dev/zero`` or a directory is refused without reading a
byte, so nothing blocks or reads forever), and at most ``DEFAULT_MAX_IMAGE_BYTES`` of them.

Failures raise ``ImageError`` (an ``InvalidInput``) whose ``error_type`` is ``ImageNotFound``, ``ImageUnreadable``,
``ImageTooLarge``, ``DecompressionBomb`` or ``ImageOutsideRoot`` (a confined path that leads out of its root); the annotator turns them into error records or drops the image, as
configured.
"""
from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from mmib_cli.io.records import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "RASTER_FORMATS",
    "ImageError",
    "check_image",
    "crop_image",
    "load_image",
    "normalize_pixels",
    "open_rgb",
    "open_thumbnail",
    "read_image_file",
    "resize_size",
    "resolve_image_path",
    "to_rgb",
]

DEFAULT_MAX_PIXELS = 89_478_485
"""Largest accepted image (width x height), Pillow's default ``MAX_IMAGE_PIXELS``."""

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest accepted image file (bytes, 64 MiB); a larger one is an ``ImageTooLarge`` error."""

RASTER_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "TGA", "ICO", "JPEG2000", "AVIF", "HEIF",
                  "QOI", "PCX")
"""Pillow formats ``load_image`` opens (when their plugin is available); script-like formats (EPS...) never are."""

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WHITE = (255, 255, 255, 255)


class ImageError(InputError):
    """An image cannot be used; ``error_type`` is ``ImageNotFound``, ``ImageUnreadable``, ``ImageTooLarge`` or
    ``DecompressionBomb``.

    Args:
        message: what failed, naming the file.
        error_type: the error kind written to the error record.
    """

    def __init__(self, message: str, *, error_type: str = "ImageUnreadable") -> None:
        super().__init__(message, error_type=error_type)


def resolve_image_path(image: str, *, base_dir: Path, image_root: Path | None = None,
                       confine: bool = False) -> Path:
    """Turn an input record's image field into a path (existence is checked by ``load_image``).

    Args:
        image: the path as written in the input (``~`` is expanded).
        base_dir: folder of the input file (the current directory for stdin).
        image_root: folder that relative paths are resolved against instead of ``base_dir``.
        confine: refuse a path that, resolved (``..`` and symlinks followed), lies outside the image root
            (``image_root``, else ``base_dir``): posts from the internet may name any file (``/etc/...``, ``../``,
            a symlink out of the folder).

    Returns:
        ``image`` itself when absolute, else joined to ``image_root`` (if given) or ``base_dir``; with ``confine``,
        the resolved path.

    Raises:
        ImageError: (``ImageNotFound``) the value is a URL: only local files are read; (``ImageOutsideRoot``) with
            ``confine``, the path resolves outside the image root.
    """
    if _URL_RE.match(image):
        raise ImageError(
            f"image {image!r} is a URL; mmib reads local files only: download it and give its path",
            error_type="ImageNotFound",
        )
    root = Path(image_root if image_root is not None else base_dir)
    path = Path(image).expanduser()
    path = path if path.is_absolute() else root / path
    if not confine:
        return path
    try:
        real, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
        raise ImageError(f"image {_shown(Path(image))} cannot be resolved ({type(exc).__name__})",
                         error_type="ImageOutsideRoot") from exc
    if real != real_root and real_root not in real.parents:
        raise ImageError(f"image {_shown(Path(image))} is outside the image root {_shown(real_root)} (an absolute "
                         "path, ../ or a symlink out of it); only files under the root are read unless image "
                         "confinement is turned off for trusted input", error_type="ImageOutsideRoot")
    return real


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _shown(path: Path, limit: int = 200) -> str:
    """`path` for a message, its middle cut when it is longer than `limit` characters (no 4 KB error lines)."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _not_found(path: Path) -> ImageError:
    return ImageError(
        f"image not found: {_shown(path)} (relative image paths resolve against the image root, by default the input "
        "file's folder)",
        error_type="ImageNotFound",
    )


def read_image_file(path: Path | str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, whole: bool = True) -> bytes:
    """Read an image file safely: only a regular file, at most ``max_bytes``; never blocks on a pipe or device.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO without a writer returns at once) and checked with
    ``fstat`` before anything is read; reading stops at ``max_bytes + 1`` bytes, so a file that grows or lies
    about its size cannot make it read forever.

    Args:
        path: image file.
        max_bytes: largest accepted size.
        whole: read the whole file (else only check it and return ``b""``).

    Returns:
        The file's bytes (``b""`` when ``whole`` is False).

    Raises:
        ImageError: ``ImageNotFound`` (no such file), ``ImageTooLarge`` (over ``max_bytes``) or ``ImageUnreadable``
            (a directory, FIFO, device or socket; permission denied; an I/O error).
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _not_found(path) from exc
    except IsADirectoryError as exc:
        raise ImageError(f"image path {path} is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageError(f"image {path} cannot be read: permission denied") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)  # strerror: the message without the path again
        raise ImageError(f"image {_shown(path)} cannot be opened ({type(exc).__name__}: {reason})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image path {path} is {_kind(info.st_mode)}, not an image file")
        if info.st_size > max_bytes:
            raise ImageError(f"image {path} is {info.st_size} bytes, over the limit of {max_bytes} bytes",
                             error_type="ImageTooLarge")
        data = _read_at_most(fd, max_bytes + 1) if whole else b""
    except OSError as exc:
        raise ImageError(f"image {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageError(f"image {path} grew over the limit of {max_bytes} bytes while read",
                         error_type="ImageTooLarge")
    return data


def _read_at_most(fd: int, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def resize_size(image_size: int) -> int:
    """Shorter side before the centre crop: ``round(image_size * 256 / 224)`` (256 for 224)."""
    return int(round(image_size * 256 / 224))


def _open_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in RASTER_FORMATS if f in Image.OPEN)


def _check_pixels(size: tuple[int, int], max_pixels: int, path: Path) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"image {path} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(a possible decompression bomb); resize it or raise max_pixels",
            error_type="DecompressionBomb",
        )


def _reduced(im: Image.Image, size: int) -> Image.Image:
    """`im` shrunk by the largest integer factor that keeps its longest side at least `size` (box averaging), before
    any mode conversion, so a thumbnail never converts the full-size pixels (16-bit ones included)."""
    factor = max(im.size) // size if size > 0 else 1
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):  # Pillow cannot reduce these: average blocks in numpy (2 bytes per pixel copy)
        pixels = np.asarray(im)
        height, width = (max(1, n // factor) for n in pixels.shape[:2])
        if pixels.shape[0] < factor or pixels.shape[1] < factor:
            block = pixels[::factor, ::factor]
        else:
            block = pixels[:height * factor, :width * factor].reshape(height, factor, width, factor).mean(
                axis=(1, 3), dtype=np.float32)
        return Image.fromarray(np.rint(block).astype(np.uint16))
    if im.mode in ("1", "P", "PA"):
        im = im.convert("RGBA" if im.mode != "1" else "L")
    return im.reduce(factor)


def _decode(path: Path, max_pixels: int, max_bytes: int, *, draft_size: int | None,
            load: bool, thumbnail: int | None = None) -> Image.Image | None:
    """Read ``path`` (``read_image_file``), parse its header, check its pixel count, and decode it when ``load``
    (shrunk towards ``thumbnail`` pixels before any conversion when given)."""
    data = read_image_file(path, max_bytes=max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_open_formats()) as im:
                _check_pixels(im.size, max_pixels, path)
                if not load:
                    return None
                if draft_size and im.format in ("JPEG", "MPO"):
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                if thumbnail:
                    shrunk = _reduced(im, thumbnail)
                    return to_rgb(_upright(shrunk, path))
                return to_rgb(_upright(im, path))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image {path} is too large: {exc}", error_type="DecompressionBomb") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path} is not an image in a supported format ({', '.join(_open_formats())})") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted data is a per-record error
        raise ImageError(
            f"image {path} cannot be decoded, it may be truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def open_rgb(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
             max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """Open an image safely and return it upright (EXIF orientation applied) in RGB mode.

    Only a regular file of at most ``max_bytes`` is read (see ``read_image_file``). The pixel limit is checked on
    the header before any decoding. Pillow's own decompression-bomb warning and error (global
    ``Image.MAX_IMAGE_PIXELS``) are treated as errors too, so the effective limit is the smaller of both.

    Args:
        path: image file.
        max_pixels: largest accepted width x height.
        draft_size: if given, JPEGs may be decoded at 1/2, 1/4 or 1/8 scale as long as both sides stay at least
            this many pixels (much faster for large photos).
        max_bytes: largest accepted file size.

    Returns:
        A loaded RGB image (alpha composited on white).

    Raises:
        ImageError: ``ImageNotFound`` (no such file), ``ImageTooLarge`` (file over ``max_bytes``),
            ``DecompressionBomb`` (too many pixels) or ``ImageUnreadable`` (not a regular file, not an image,
            truncated, corrupt, unsupported mode).
    """
    image = _decode(Path(path), max_pixels, max_bytes, draft_size=draft_size, load=True)
    assert image is not None
    return image


THUMBNAIL_MAX_PIXELS = 50_000_000
"""Largest image (width x height) `open_thumbnail` decodes: decoding holds at most 4 bytes per pixel (200 MB) plus,
for 16-bit pictures, a 2-byte copy; larger pictures are refused (``DecompressionBomb``) instead of decoded."""


def open_thumbnail(path: Path | str, size: int, *, max_pixels: int = THUMBNAIL_MAX_PIXELS,
                   max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """An RGB picture of at most `size` pixels on its longest side, decoded with a memory bound.

    A JPEG is decoded at 1/2, 1/4 or 1/8 scale (draft mode); any picture is shrunk by an integer factor (box
    average) right after decoding, before its mode is converted, so memory is bounded by ``max_pixels`` times the
    decoded bytes per pixel, not by the conversions (a 16-bit PNG is never turned into float64 at full size).

    Raises:
        ImageError: as ``open_rgb``; ``DecompressionBomb`` over ``max_pixels``.
    """
    image = _decode(Path(path), max_pixels, max_bytes, draft_size=size, load=True, thumbnail=size)
    assert image is not None
    image.thumbnail((size, size))
    return image


def check_image(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
    """Check that an image could be used, without decoding its pixels: a regular, readable file within
    ``max_bytes`` whose header parses as a supported format within ``max_pixels``.

    Used when the model reads no pixels but ``--on-missing-image error|skip`` must still apply.

    Raises:
        ImageError: as ``open_rgb`` (a truncated pixel stream is not detected: nothing is decoded).
    """
    _decode(Path(path), max_pixels, max_bytes, draft_size=None, load=False)


def _upright(im: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored (the pixels are still usable)."""
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - malformed metadata must not reject a decodable picture
        logger.debug("ignoring unreadable EXIF orientation of %s: %s", path, exc)
        return im
    return upright if upright is not None else im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB.

    Transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) is composited on white; 16-bit and
    32-bit integer grayscale (``I;16*``, ``I``) is scaled from 0..65535 to 0..255; float (``F``) from 0..1 when its
    values lie there, else clipped to 0..255; CMYK, YCbCr, palette, 1-bit and others use Pillow's conversion.

    Args:
        im: an image in any mode.

    Returns:
        An RGB image (``im`` itself when it is already RGB without transparency).

    Raises:
        ValueError: Pillow cannot convert the mode.
    """
    mode = im.mode
    if mode in _ALPHA_MODES or (mode in ("P", "RGB", "L", "1") and "transparency" in im.info):
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = np.clip(arr, 0, 65535) / 257.0
        elif mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")


def crop_image(im: Image.Image, *, image_size: int) -> torch.Tensor:
    """Resize the shorter side to ``resize_size(image_size)`` and centre-crop a square: ``(3, S, S)`` uint8.

    The crop box is mapped back to the source image and resized in one antialiased bilinear step, which equals
    resize-then-crop without ever materialising the full resized image (safe for very elongated images).
    """
    if im.mode != "RGB":
        im = to_rgb(im)
    width, height = im.size
    scale = resize_size(image_size) / min(width, height)
    side = image_size / scale  # the crop's side in source pixels
    left, top = (width - side) / 2.0, (height - side) / 2.0
    square = im.resize(
        (image_size, image_size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )
    return TF.pil_to_tensor(square).contiguous()


def normalize_pixels(pixels: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 pixels ``(..., 3, S, S)`` to float32 in 0..1, normalised per channel (one image or a whole batch)."""
    tensor = TF.to_dtype(pixels, torch.float32, scale=True)
    return TF.normalize(tensor, mean=[float(m) for m in mean], std=[float(s) for s in std]).contiguous()


def load_image(
    path: Path | str,
    *,
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> torch.Tensor:
    """Load an image file as a normalised ``(3, S, S)`` tensor (see ``open_rgb``, ``crop_image``).

    Args:
        path: image file.
        image_size: side ``S`` of the output square (pixels).
        mean: per-channel mean (0..1 scale); with ``std``, ``None`` returns the uint8 crop unnormalised (4x
            smaller while it waits for its batch; ``normalize_pixels`` then gives the same floats).
        std: per-channel standard deviation.
        max_pixels: largest accepted width x height.
        max_bytes: largest accepted file size.

    Returns:
        ``(3, S, S)`` float32 tensor (uint8 when ``mean`` and ``std`` are ``None``).

    Raises:
        ImageError: ``ImageNotFound``, ``ImageUnreadable``, ``ImageTooLarge`` or ``DecompressionBomb``.
    """
    im = open_rgb(path, max_pixels=max_pixels, draft_size=resize_size(image_size), max_bytes=max_bytes)
    try:
        pixels = crop_image(im, image_size=image_size)
    except (ValueError, OSError) as exc:
        raise ImageError(f"image {path} cannot be resized ({type(exc).__name__}: {exc})") from exc
    if mean is None and std is None:
        return pixels
    return normalize_pixels(pixels, mean=mean, std=std)


def stack_images(images: Sequence[torch.Tensor | None],
                 image_size: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Stack per-post image tensors into a batch: `(pixels (B,3,S,S), present (B,) bool)`, in the images' dtype.

    Posts without an image get zeros and `present=False`; `(None, None)` when no post has an image.
    """
    first = next((image for image in images if image is not None), None)
    if first is None:
        return None, None
    pixels = torch.zeros((len(images), 3, image_size, image_size), dtype=first.dtype)
    present = torch.zeros(len(images), dtype=torch.bool)
    for i, image in enumerate(images):
        if image is not None:
            pixels[i], present[i] = image, True
    return pixels, present
