"""Probing (headers only, in the gateway) and decoding for a processor (in the replica)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from serve.contract import EncodedImage
from serve.errors import APIError
from serve.image_codec import decode_image, decode_image_for, probe_image
from serve.images import ImageLimits

PARAM = "images[0]"
LIMITS = ImageLimits()
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def oriented(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims the given size, with a tiny IDAT: no pixels behind the claim."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def marked(width: int, height: int) -> Image.Image:
    """Grey, with a red top-left and a blue bottom-right corner, to see where the corners end up."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width // 4, height // 4), fill=(255, 0, 0))
    draw.rectangle((width - width // 4, height - height // 4, width, height), fill=(0, 0, 255))
    return image


def expect_error(status: int, code: str, call, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args, **kwargs)
    error = info.value
    assert (error.status, error.code, error.param) == (status, code, PARAM), error.message
    return error


def near(pixel: tuple[int, ...], color: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 24 for a, b in zip(pixel, color, strict=True))


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    return encode(marked(4032, 3024), "JPEG", quality=90)


@pytest.fixture(scope="module")
def rotated_photo_jpeg() -> bytes:
    # Stored 4032x3024, displayed 3024x4032 (turned 90 degrees clockwise).
    return encode(marked(4032, 3024), "JPEG", quality=90, exif=oriented(6))


# --- probing --------------------------------------------------------------------------------


def test_probe_reads_format_and_size():
    data = encode(Image.new("RGB", (7, 5)), "PNG")
    assert probe_image(data, LIMITS, PARAM) == EncodedImage(data, "PNG", 7, 5)
    for fmt, name in (("JPEG", "JPEG"), ("WEBP", "WEBP"), ("GIF", "GIF"), ("BMP", "BMP")):
        encoded = probe_image(encode(Image.new("RGB", (7, 5)), fmt), LIMITS, PARAM)
        assert (encoded.format, encoded.size) == (name, (7, 5))


def test_probe_does_not_decode_pixels(photo_jpeg):
    # The scan data is cut off after 4 KB: only a decoder would notice.
    truncated = photo_jpeg[:4096]
    assert probe_image(truncated, LIMITS, PARAM).size == (4032, 3024)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(truncated)).load()


def test_probe_refuses_bombs_before_decoding():
    error = expect_error(413, "too_large", probe_image, png_header(8000, 8000), LIMITS, PARAM)
    assert "8000x8000" in error.message
    # Far past Pillow's own bomb limit, which fires first: no size in the message then.
    expect_error(413, "too_large", probe_image, png_header(50_000, 50_000), LIMITS, PARAM)
    # Our limits opened wide: Pillow's check still refuses.
    wide = ImageLimits(max_pixels=10**12, max_side=10**6)
    expect_error(413, "too_large", probe_image, png_header(50_000, 50_000), wide, PARAM)


def test_probe_refuses_a_webp_canvas_bomb():
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (15999).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    expect_error(413, "too_large", probe_image, data, LIMITS, PARAM)


def test_probe_refuses_corrupt_headers_and_unknown_formats():
    jpeg = encode(Image.new("RGB", (32, 32)), "JPEG")
    expect_error(400, "invalid_image", probe_image, jpeg[:40], LIMITS, PARAM)
    expect_error(400, "invalid_image", probe_image, b"\x89PNG\r\n\x1a\n" + b"\0" * 20, LIMITS, PARAM)
    expect_error(400, "unsupported_image_format", probe_image, b"II*\x00\x08\x00\x00\x00", LIMITS, PARAM)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_probe_gives_the_displayed_size(fmt, orientation):
    data = encode(Image.new("RGB", (40, 20)), fmt, exif=oriented(orientation))
    assert probe_image(data, LIMITS, PARAM).size == ((20, 40) if orientation >= 5 else (40, 20))


def test_probe_reads_xmp_orientation_like_exif_transpose():
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    data = encode(Image.new("RGB", (40, 20)), "JPEG", xmp=xmp)
    assert probe_image(data, LIMITS, PARAM).size == (20, 40)
    assert decode_image_for(probe_image(data, LIMITS, PARAM), LIMITS, PARAM).size == (20, 40)


def test_png_orientation_after_the_image_data_is_found_without_decoding():
    # Pillow reads an eXIf chunk that follows IDAT only when it loads the pixels.
    png = encode(marked(40, 20), "PNG")
    end = png.rindex(b"IEND") - 4
    data = png[:end] + png_chunk(b"eXIf", oriented(8).tobytes()) + png[end:]
    assert probe_image(data, LIMITS, PARAM).size == (20, 40)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert decode_image_for(probe_image(data, LIMITS, PARAM), LIMITS, PARAM).tobytes() == expected.tobytes()


# --- decoding -------------------------------------------------------------------------------


def test_orientation_6_decodes_as_displayed():
    data = encode(marked(40, 20), "PNG", exif=oriented(6))
    decoded = decode_image_for(probe_image(data, LIMITS, PARAM), LIMITS, PARAM)
    assert decoded.size == (20, 40)
    # Turned clockwise: the red top-left corner is now top-right.
    assert decoded.getpixel((19, 0)) == (255, 0, 0)
    assert decoded.getpixel((0, 39)) == (0, 0, 255)
    assert ORIENTATION not in decoded.getexif()


def _cases() -> dict[str, bytes]:
    rgb = marked(53, 37)
    palette = rgb.quantize()
    grey16 = Image.new("I;16", (9, 4))
    grey16.putpixel((1, 1), 40000)
    return {
        "jpeg": encode(rgb, "JPEG"),
        "jpeg-rotated": encode(rgb, "JPEG", exif=oriented(5)),
        "jpeg-grey": encode(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "png-rgba-rotated": encode(rgb.convert("RGBA"), "PNG", exif=oriented(8)),
        "png-palette-transparent": encode(palette, "PNG", transparency=0),
        "png-16-bit": encode(grey16, "PNG"),
        "webp-rotated": encode(rgb, "WEBP", lossless=True, exif=oriented(3)),
        "gif": encode(palette, "GIF"),
        "bmp": encode(rgb, "BMP"),
    }


@pytest.mark.parametrize(("name", "data"), _cases().items())
def test_without_min_size_the_pixels_are_decode_images(name, data):
    decoded = decode_image_for(probe_image(data, LIMITS, PARAM), LIMITS, PARAM)
    expected = decode_image(data, LIMITS, PARAM)
    assert decoded.mode == "RGB"
    assert (decoded.size, decoded.tobytes()) == (expected.size, expected.tobytes())
    # A plain image: not the opened file, which holds the bytes and possibly a decoder.
    assert not isinstance(decoded, ImageFile.ImageFile)


def test_jpeg_decodes_at_the_smallest_covering_scale(photo_jpeg):
    encoded = probe_image(photo_jpeg, LIMITS, PARAM)
    assert decode_image_for(encoded, LIMITS, PARAM, (768, 600)).size == (1008, 756)
    assert decode_image_for(encoded, LIMITS, PARAM, (768, 768)).size == (2016, 1512)
    assert decode_image_for(encoded, LIMITS, PARAM, (256, 256)).size == (504, 378)
    # Past DCT scaling's 1/8, a box reduction: 504x378 by 5.
    assert decode_image_for(encoded, LIMITS, PARAM, (64, 64)).size == (101, 76)
    assert decode_image_for(encoded, LIMITS, PARAM, (4000, 3000)).size == (4032, 3024)
    small = decode_image_for(encoded, LIMITS, PARAM, (768, 600))
    assert near(small.getpixel((10, 10)), (255, 0, 0))
    assert near(small.getpixel((1000, 750)), (0, 0, 255))


def test_jpeg_scales_in_the_stored_orientation(rotated_photo_jpeg):
    encoded = probe_image(rotated_photo_jpeg, LIMITS, PARAM)
    assert encoded.size == (3024, 4032)
    decoded = decode_image_for(encoded, LIMITS, PARAM, (600, 768))
    assert decoded.size == (756, 1008)
    assert near(decoded.getpixel((750, 10)), (255, 0, 0))
    assert near(decoded.getpixel((10, 1000)), (0, 0, 255))
    # Asked as if it were stored upright, 768 wide no longer fits a 1/4 scale.
    assert decode_image_for(encoded, LIMITS, PARAM, (768, 600)).size == (1512, 2016)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_scaled_decodes_cover_min_size_in_every_orientation(orientation):
    data = encode(marked(1600, 1000), "JPEG", exif=oriented(orientation))
    encoded = probe_image(data, LIMITS, PARAM)
    min_size = (300, 190) if orientation < 5 else (190, 300)
    decoded = decode_image_for(encoded, LIMITS, PARAM, min_size)
    assert decoded.size == ((400, 250) if orientation < 5 else (250, 400))
    full = decode_image_for(encoded, LIMITS, PARAM)
    # The corners land where the full decode puts them.
    for x, y in ((0.05, 0.05), (0.95, 0.95), (0.95, 0.05), (0.05, 0.95)):
        small_xy = (int(x * decoded.width), int(y * decoded.height))
        full_xy = (int(x * full.width), int(y * full.height))
        assert near(decoded.getpixel(small_xy), full.getpixel(full_xy)), (x, y)


def test_other_formats_are_reduced_after_a_full_decode():
    data = encode(marked(400, 300), "PNG", exif=oriented(6))
    encoded = probe_image(data, LIMITS, PARAM)
    assert encoded.size == (300, 400)
    decoded = decode_image_for(encoded, LIMITS, PARAM, (70, 100))
    # Factor min(300 // 70, 400 // 100) = 4, by the same box filter as Image.reduce.
    assert decoded.size == (75, 100)
    full = decode_image(data, LIMITS, PARAM)
    assert decoded.tobytes() == full.reduce(4).tobytes()
    # A factor under 2 is no reduction.
    assert decode_image_for(encoded, LIMITS, PARAM, (160, 210)).size == (300, 400)


def test_decode_enforces_its_own_limits():
    encoded = probe_image(encode(Image.new("RGB", (100, 100)), "PNG"), LIMITS, PARAM)
    error = expect_error(413, "too_large", decode_image_for, encoded, ImageLimits(max_side=50), PARAM)
    assert "100x100" in error.message
    expect_error(413, "too_large", decode_image_for, encoded, ImageLimits(max_pixels=9999), PARAM, (10, 10))


def test_decode_refuses_a_declared_size_that_is_not_the_datas():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    error = expect_error(400, "invalid_image", decode_image_for, EncodedImage(data, "PNG", 5000, 5000), LIMITS, PARAM)
    assert "5000x5000" in error.message
    expect_error(400, "invalid_image", decode_image_for, EncodedImage(data, "JPEG", 100, 100), LIMITS, PARAM)


@pytest.mark.parametrize("min_size", [None, (100, 100)])
def test_corrupt_body_behind_a_valid_header_fails_at_decode(photo_jpeg, min_size):
    encoded = probe_image(photo_jpeg[: len(photo_jpeg) // 3], LIMITS, PARAM)
    error = expect_error(400, "invalid_image", decode_image_for, encoded, LIMITS, PARAM, min_size)
    assert "JPEG data is corrupt or truncated" in error.message


def test_truncated_png_body_fails_at_decode():
    noisy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    data = encode(noisy, "PNG")
    encoded = probe_image(data[: len(data) // 2], LIMITS, PARAM)
    expect_error(400, "invalid_image", decode_image_for, encoded, LIMITS, PARAM)


def test_min_size_must_be_positive():
    encoded = probe_image(encode(Image.new("RGB", (10, 10)), "PNG"), LIMITS, PARAM)
    with pytest.raises(ValueError, match="min_size"):
        decode_image_for(encoded, LIMITS, PARAM, (0, 10))
