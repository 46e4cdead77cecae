"""Safe image loading: modes, EXIF orientation, size limits, broken files, resize/crop/normalise."""
from __future__ import annotations

import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile

from mmib_cli.errors import InvalidInput
from mmib_cli.io.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    check_image,
    crop_image,
    load_image,
    normalize_pixels,
    open_rgb,
    read_image_file,
    resize_size,
    resolve_image_path,
    stack_images,
    to_rgb,
)

S = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _preprocess(im, *, image_size: int) -> torch.Tensor:
    """Crop then scale to 0..1 (identity normalisation): what `load_image` does after decoding."""
    return normalize_pixels(crop_image(im, image_size=image_size), **IDENTITY)


def _load(path, **kwargs):
    kwargs.setdefault("image_size", S)
    kwargs.setdefault("mean", IMAGENET_MEAN)
    kwargs.setdefault("std", IMAGENET_STD)
    return load_image(path, **kwargs)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("name", ["red", "blue", "green", "gray", "alpha", "cmyk"])
def test_sample_images_load_as_normalised_square_tensors(sample_images, name):
    tensor = _load(sample_images[name])
    assert tensor.shape == (3, S, S) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()


def test_colour_is_kept(sample_images):
    red = _load(sample_images["red"], **IDENTITY)
    centre = red[:, S // 2, S // 2]
    assert centre[0] > 0.7 and centre[1] < 0.3 and centre[2] < 0.3
    blue = _load(sample_images["blue"], **IDENTITY)[:, S // 2, S // 2]
    assert blue[2] > 0.7 and blue[0] < 0.3


def test_normalisation_uses_mean_and_std(tmp_path):
    path = tmp_path / "white.png"
    Image.new("RGB", (50, 70), (255, 255, 255)).save(path)
    assert torch.allclose(_load(path, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), torch.ones(3, S, S))
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(_load(path)[:, 0, 0], expected, atol=1e-5)


def _mode_image(mode: str) -> Image.Image:
    size = (30, 20)
    if mode == "P":
        im = Image.new("P", size, 1)
        im.putpalette([0, 0, 0, 200, 20, 20] + [0, 0, 0] * 254)
        return im
    if mode == "P+transparency":
        im = Image.new("P", size, 1)
        im.putpalette([0, 0, 0, 200, 20, 20] + [0, 0, 0] * 254)
        im.info["transparency"] = 1
        return im
    values = {
        "1": 1, "L": 200, "LA": (200, 255), "La": (200, 255), "RGBA": (200, 20, 20, 255), "RGBa": (200, 20, 20, 255),
        "PA": (1, 255), "CMYK": (0, 230, 230, 55), "YCbCr": (90, 100, 220), "HSV": (0, 230, 200), "LAB": (45, 70, 50),
        "I;16": 65535, "I;16B": 65535, "I": 65535, "F": 1.0, "RGBX": (200, 20, 20, 0),
    }
    return Image.new(mode, size, values[mode])


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "P", "P+transparency", "LA", "La", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB",
     "I;16", "I;16B", "I", "F"],
)
def test_to_rgb_converts_every_mode(mode):
    rgb = to_rgb(_mode_image(mode))
    assert rgb.mode == "RGB" and rgb.size == (30, 20)
    tensor = _preprocess(rgb, image_size=S)
    assert tensor.shape == (3, S, S) and torch.isfinite(tensor).all()


def test_alpha_is_composited_on_white():
    assert to_rgb(Image.new("RGBA", (4, 4), (10, 200, 10, 0))).getpixel((0, 0)) == (255, 255, 255)
    r, g, b = to_rgb(Image.new("RGBA", (4, 4), (10, 200, 10, 100))).getpixel((0, 0))
    assert abs(r - (255 + (10 - 255) * 100 / 255)) <= 1 and abs(g - (255 + (200 - 255) * 100 / 255)) <= 1
    assert to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(_mode_image("P+transparency")).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(_mode_image("P")).getpixel((0, 0)) == (200, 20, 20)


def test_sixteen_bit_and_float_grayscale_are_scaled():
    full = Image.new("I;16", (4, 4), 65535)
    full.putpixel((0, 0), 0)
    rgb = to_rgb(full)
    assert rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (0, 0, 0)
    assert to_rgb(Image.new("I;16", (2, 2), 32896)).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("I", (2, 2), 100)).getpixel((0, 0)) == (100, 100, 100)  # 8-bit range kept
    assert to_rgb(Image.new("F", (2, 2), 0.5)).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("F", (2, 2), 300.0)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "png"), ("LA", "png"), ("P", "gif"), ("CMYK", "tiff"),
                                           ("1", "bmp"), ("RGBA", "webp")])
def test_files_in_various_modes_load(tmp_path, mode, fmt):
    path = tmp_path / f"img.{fmt}"
    _mode_image(mode).save(path)
    assert _load(path).shape == (3, S, S)


def test_alpha_png_fixture_is_composited(sample_images):
    pixel = _load(sample_images["alpha"], **IDENTITY)[:, 0, 0]
    expected = torch.tensor([255 + (10 - 255) * 100 / 255, 255 + (200 - 255) * 100 / 255,
                             255 + (10 - 255) * 100 / 255]) / 255
    assert torch.allclose(pixel, expected, atol=0.01)


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise to display): the stored left half must end up on top."""
    stored = Image.new("RGB", (80, 40), (20, 20, 220))
    ImageDraw.Draw(stored).rectangle([0, 0, 39, 39], fill=(220, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)

    upright = open_rgb(path)
    assert upright.size == (40, 80)
    top, bottom = upright.getpixel((20, 10)), upright.getpixel((20, 70))
    assert top[0] > 150 and top[2] < 100 and bottom[2] > 150 and bottom[0] < 100

    tensor = _load(path, **IDENTITY)
    top_half, bottom_half = tensor[:, : S // 2 - 2].mean(dim=(1, 2)), tensor[:, S // 2 + 2 :].mean(dim=(1, 2))
    assert top_half[0] > 0.6 and top_half[2] < 0.3  # red on top
    assert bottom_half[2] > 0.6 and bottom_half[0] < 0.3  # blue below
    left, right = tensor[:, :, : S // 2].mean(dim=(1, 2)), tensor[:, :, S // 2 :].mean(dim=(1, 2))
    assert torch.allclose(left, right, atol=0.05)  # no left/right split any more


def test_broken_exif_block_is_ignored(tmp_path, monkeypatch):
    from PIL import ImageOps

    path = tmp_path / "a.jpg"
    Image.new("RGB", (20, 20), (220, 20, 20)).save(path)

    def broken(_im):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert open_rgb(path).size == (20, 20)


# ------------------------------------------------------------------------------------------- resize and crop


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.broadcast_to((x + y) / 2, (height, width, 1))], axis=2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


@pytest.mark.parametrize(("size", "image_size"), [((300, 200), 224), ((200, 300), 224), ((333, 217), 224),
                                                  ((40, 30), 64), ((500, 480), 240)])
def test_preprocess_matches_torchvision_resize_then_center_crop(size, image_size):
    import torchvision.transforms.v2.functional as TF

    im = _gradient(*size)
    ours = _preprocess(im, image_size=image_size)
    resized = TF.resize(im, [resize_size(image_size)], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    ref = TF.to_dtype(TF.pil_to_tensor(TF.center_crop(resized, [image_size, image_size])), torch.float32, scale=True)
    assert ours.shape == ref.shape == (3, image_size, image_size)
    assert (ours - ref).abs().mean() < 0.01


def test_resize_size():
    assert resize_size(224) == 256 and resize_size(320) == 366 and resize_size(32) == 37


def test_very_elongated_image_is_cheap(tmp_path, monkeypatch):
    path = tmp_path / "strip.png"
    Image.new("L", (1, 60_000), 90).save(path)  # resize-then-crop would build a 256 x 15M image
    sizes = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    tensor = _load(path, image_size=224, **IDENTITY)
    assert sizes and all(w * h <= 224 * 224 for w, h in sizes)  # never more pixels than the output crop
    assert tensor.shape == (3, 224, 224) and torch.allclose(tensor, torch.full_like(tensor, 90 / 255), atol=1e-3)


def test_large_jpeg_uses_reduced_decoding_with_same_result(tmp_path):
    path = tmp_path / "big.jpg"
    _gradient(1800, 1200).save(path, quality=92)
    fast = _load(path, image_size=64, **IDENTITY)
    full = _preprocess(open_rgb(path), image_size=64)
    assert (fast - full).abs().mean() < 0.02


# -------------------------------------------------------------------------------------------------- failures


def _error(path, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        _load(path, **kwargs)
    assert isinstance(info.value, InvalidInput)
    return info.value


def test_missing_file(tmp_path):
    err = _error(tmp_path / "nope.jpg")
    assert err.error_type == "ImageNotFound" and "nope.jpg" in str(err)
    assert _error(tmp_path / "not-a-dir.txt" / "x.jpg").error_type == "ImageNotFound"


def test_a_very_long_path_is_named_once_and_cut(tmp_path):
    """An image path the OS refuses as too long (or a 4 KB missing one) gives a short message, not two copies."""
    for path in (tmp_path / ("x" * 5000 + ".jpg"), tmp_path / "/".join(["d" * 200] * 20) / "x.jpg"):
        err = _error(path)
        assert len(str(err)) < 600 and str(path)[:50] in str(err) and str(path)[-50:] in str(err)
    assert "File name too long" in str(_error(tmp_path / ("x" * 5000 + ".jpg")))


def test_text_file_corrupt_jpeg_and_directory_are_unreadable(sample_images, tmp_path):
    for path in (sample_images["text"], sample_images["corrupt"], tmp_path):
        err = _error(path)
        assert err.error_type == "ImageUnreadable" and str(path) in str(err)


def test_script_formats_are_never_opened(tmp_path):
    path = tmp_path / "picture.eps"  # Pillow would hand EPS to Ghostscript
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    err = _error(path)
    assert err.error_type == "ImageUnreadable" and "supported format" in str(err)


def test_truncated_jpeg_is_unreadable(tmp_path):
    rng = np.random.default_rng(0)
    data_path = tmp_path / "full.jpg"
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(data_path, quality=90)
    cut = tmp_path / "cut.jpg"
    data = data_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    err = _error(cut)
    assert err.error_type == "ImageUnreadable" and "truncated" in str(err)


def test_decompression_bomb_by_max_pixels(sample_images):
    err = _error(sample_images["red"], max_pixels=96 * 64 - 1)
    assert err.error_type == "DecompressionBomb" and "96x64" in str(err)
    assert _load(sample_images["red"], max_pixels=96 * 64).shape == (3, S, S)


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 10_000), (9_500, 9_500)])
def test_decompression_bomb_png_header(tmp_path, width, height):
    """Headers over 2x, between 1x and 2x Pillow's global limit, and just over the default max_pixels."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    assert width * height > DEFAULT_MAX_PIXELS
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _error(path)
    assert err.error_type == "DecompressionBomb"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters_before


def test_bomb_check_runs_before_decoding(tmp_path, monkeypatch):
    """Even with Pillow's global limit switched off, the per-call limit refuses the header."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(50_000, 50_000))
    assert _error(path, max_pixels=10_000_000).error_type == "DecompressionBomb"


def _returns(call, *args, **kwargs):
    """Run ``call`` in a daemon thread and fail (instead of hanging the suite) if it blocks or reads forever."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), f"{call.__name__}{args} blocked"
    return outcome


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "dev-null"])
def test_never_ending_or_non_regular_files_are_refused_without_reading(tmp_path, kind):
    path = {"dev-zero": Path("/dev/zero"), "dev-null": Path("/dev/null"), "directory": tmp_path}.get(kind)
    if kind == "fifo":
        path = tmp_path / "pipe.jpg"
        os.mkfifo(path)  # no writer: a plain open() would block forever
    if not path.exists():
        pytest.skip(f"{path} does not exist here")
    for call in (_load, check_image, read_image_file):
        error = _returns(call, path).get("error")
        assert isinstance(error, ImageError) and error.error_type == "ImageUnreadable", error
        assert "not an image file" in str(error) and str(path) in str(error)


def test_byte_cap(sample_images, tmp_path):
    size = sample_images["red"].stat().st_size
    assert read_image_file(sample_images["red"], max_bytes=size) == sample_images["red"].read_bytes()
    for call in (read_image_file, check_image, _load):
        with pytest.raises(ImageError) as info:
            call(sample_images["red"], max_bytes=size - 1)
        assert info.value.error_type == "ImageTooLarge" and f"{size} bytes" in str(info.value)


def test_check_image_reads_the_header_only(sample_images, hard_images, tmp_path):
    check_image(sample_images["red"])
    check_image(hard_images["truncated"])  # pixels are not decoded: only the header must parse
    for path, kind in ((tmp_path / "nope.jpg", "ImageNotFound"), (sample_images["text"], "ImageUnreadable"),
                       (sample_images["corrupt"], "ImageUnreadable"), (hard_images["bomb"], "DecompressionBomb")):
        with pytest.raises(ImageError) as info:
            check_image(path)
        assert info.value.error_type == kind


def test_unreadable_file_is_refused(sample_images, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "secret.jpg"
    path.write_bytes(sample_images["red"].read_bytes())
    path.chmod(0)
    assert "permission denied" in str(_error(path))


# ------------------------------------------------------------------------------------------------------ paths


def test_resolve_image_path(tmp_path):
    base = tmp_path / "data"
    root = tmp_path / "images"
    assert resolve_image_path("a/b.jpg", base_dir=base, image_root=None) == base / "a" / "b.jpg"
    assert resolve_image_path("a/b.jpg", base_dir=base, image_root=root) == root / "a" / "b.jpg"
    absolute = str(tmp_path / "abs.jpg")
    assert resolve_image_path(absolute, base_dir=base, image_root=root) == Path(absolute)
    assert resolve_image_path("~/x.jpg", base_dir=base) == Path.home() / "x.jpg"


@pytest.mark.parametrize("url", ["http://example.com/a.jpg", "https://x/y.png", "s3://bucket/key.jpg"])
def test_resolve_image_path_rejects_urls(tmp_path, url):
    with pytest.raises(ImageError) as info:
        resolve_image_path(url, base_dir=tmp_path, image_root=None)
    assert info.value.error_type == "ImageNotFound" and "URL" in str(info.value)


def test_uint8_crops_normalised_per_batch_equal_the_float_path(sample_images):
    """The pipeline queues uint8 crops and normalises whole batches: bit-for-bit the per-image float tensors."""
    names = sorted(sample_images)[:3]
    crops = [load_image(sample_images[n], image_size=S, mean=None, std=None) for n in names]
    assert all(c.dtype == torch.uint8 and c.shape == (3, S, S) for c in crops)
    pixels, present = stack_images([crops[0], None, *crops[1:]], S)
    assert pixels.dtype == torch.uint8 and present.tolist() == [True, False, True, True]
    batch = normalize_pixels(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for row, name in zip((0, 2, 3), names):
        assert torch.equal(batch[row], _load(sample_images[name]))
