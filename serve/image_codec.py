"""Probe and decode image bytes: the gateway probes, the model replica decodes.

`probe_image` reads only headers: the format, the pixel size (checked against the limits before
any pixels exist, so decompression bombs cost nothing) and the EXIF orientation, giving an
`EncodedImage` with the size the image displays at. `decode_image_for` runs in the replica: it
probes again under its own limits and decodes to RGB, optionally at the smallest scale that still
covers the size its processor needs. Every failure is an APIError that is safe to show.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from PIL import ExifTags, Image

from serve.contract import EncodedImage
from serve.errors import APIError, bad_request, too_large

if TYPE_CHECKING:
    from serve.images import ImageLimits

ALLOWED_FORMATS = ("PNG", "JPEG", "WebP", "GIF", "BMP")
_BOMB_LOCK = threading.Lock()
# The same transpositions as PIL.ImageOps.exif_transpose; 5 to 8 swap width and height.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
# PNG chunks Pillow reads orientation from, and the APNG chunks left out of a metadata copy.
_PNG_METADATA = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})
_APNG_CHUNKS = frozenset({b"acTL", b"fcTL", b"fdAT"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The errors Pillow raises for corrupt or truncated data.
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


def probe_image(data: bytes, limits: ImageLimits, param: str) -> EncodedImage:
    """Check image bytes from their headers alone: format, size within the limits, orientation.

    No pixels are decoded, so a body that is corrupt behind a valid header passes here and is
    refused when the replica decodes it.
    """
    fmt = _sniff_format(data, param)
    with _decode_errors(fmt, limits, param):
        image, orientation = _open_checked(data, fmt, limits, param)
        width, height = _oriented(image.size, orientation)
    return EncodedImage(data, fmt, width, height)


def decode_image_for(
    image: EncodedImage, limits: ImageLimits, param: str, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an EncodedImage to RGB in its displayed orientation, checking it again first.

    With `min_size` (width, height as displayed), decode at the smallest scale whose size still
    covers it in both dimensions: JPEG scales while decoding (DCT scaling, 1/2 to 1/8), then any
    format is box-reduced by the largest integer factor that keeps both sides >= min_size. Without
    it the pixels are those of `decode_image`.
    """
    if min_size is not None and min(min_size) < 1:
        raise ValueError(f"min_size must be positive, got {min_size}")
    fmt = _sniff_format(image.data, param)
    with _decode_errors(fmt, limits, param):
        opened, orientation = _open_checked(image.data, fmt, limits, param)
        shown = _oriented(opened.size, orientation)
        if (fmt, shown) != (image.format, image.size):
            raise bad_request(
                f"The image's declared format and size ({image.format} {image.width}x{image.height}) "
                f"do not match its data ({fmt} {shown[0]}x{shown[1]}).",
                param,
                "invalid_image",
            )
        return _decode(opened, fmt, orientation, min_size)


def decode_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Check, fully decode and orient image bytes, returning an RGB image."""
    fmt = _sniff_format(data, param)
    with _decode_errors(fmt, limits, param):
        opened, orientation = _open_checked(data, fmt, limits, param)
        return _decode(opened, fmt, orientation, None)


# --- opening: headers only ------------------------------------------------------------------


def _open_checked(data: bytes, fmt: str, limits: ImageLimits, param: str) -> tuple[Image.Image, int]:
    if fmt == "WEBP":
        # libwebp allocates the whole canvas when the file is opened.
        _check_dimensions(_webp_canvas_size(data), limits, param)
    image = _open(data, fmt)
    _check_dimensions(image.size, limits, param)
    return image, _orientation(image, fmt, data)


def _open(data: bytes, fmt: str) -> Image.Image:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat the
    # warning as an error. Warning filters are process-global, so the lock
    # stops concurrent decodes from restoring each other's filters out of
    # order; it is held only while the header is parsed.
    with _BOMB_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=[fmt])


def _orientation(image: Image.Image, fmt: str, data: bytes) -> int:
    """The EXIF (or XMP) orientation, 1 to 8, read as ImageOps.exif_transpose reads it after loading."""
    if fmt == "PNG":
        late = _png_with_late_metadata(data)
        if late is not None:
            # Pillow reads metadata after the image data only when loading: load a 1x1 copy.
            with Image.open(io.BytesIO(late), formats=["PNG"]) as copy:
                copy.load()
                exif = copy.getexif()
        else:
            # PngImageFile.getexif would decode the whole image to look past the image data.
            exif = Image.Image.getexif(image)
    else:
        exif = image.getexif()
    orientation = exif.get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in _TRANSPOSE else 1


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation >= 5 else size


def _png_with_late_metadata(data: bytes) -> bytes | None:
    """None if no metadata chunk follows the image data, else a 1x1 PNG with the same chunks around it.

    The copy keeps every chunk but the image data and the APNG frames in order, and stops where
    Pillow stops reading after the image data, so its metadata reads as the original's would.
    """
    before: list[bytes] = []
    after: list[bytes] = []
    seen_data = animated = late = False
    for kind, start, end in _png_chunks(data):
        if kind == b"IDAT":
            seen_data = True
        elif not seen_data:
            if kind == b"acTL" and end - start >= 8:
                animated = struct.unpack_from(">I", data, start)[0] > 1
            if kind != b"IHDR" and kind not in _APNG_CHUNKS:
                before.append(data[start - 8 : end + 4])
        elif kind == b"IEND" or (kind == b"fcTL" and animated):
            break
        elif kind not in _APNG_CHUNKS:
            late = late or kind in _PNG_METADATA
            after.append(data[start - 8 : end + 4])
    if not late:
        return None
    bit_depth, color_type = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type, 4)
    row = b"\x00" * (1 + (bit_depth * channels + 7) // 8)
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, bit_depth, color_type, 0, 0, 0))
    pixels = _png_chunk(b"IDAT", zlib.compress(row))
    return b"".join([_PNG_SIGNATURE, header, *before, pixels, *after, _png_chunk(b"IEND", b"")])


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of each whole chunk, stopping where the chunk list breaks."""
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        start = position + 8
        if not kind.isalpha() or start + length + 4 > len(data):
            return
        yield kind, start, start + length
        position = start + length + 4


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# --- decoding -------------------------------------------------------------------------------


def _decode(image: Image.Image, fmt: str, orientation: int, min_size: tuple[int, int] | None) -> Image.Image:
    opened = image
    if min_size is not None:
        # Scaling happens in the stored orientation.
        min_size = _oriented(min_size, orientation)
        if fmt == "JPEG":
            image.draft("RGB", min_size)
    image.load()
    image = _to_rgb(image)
    if min_size is not None:
        factor = min(image.width // min_size[0], image.height // min_size[1])
        if factor >= 2:
            image = image.reduce(factor)
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        image = image.transpose(method)
        # Drop the metadata that carries the orientation, so it is never applied twice.
        for key in _ORIENTATION_KEYS:
            image.info.pop(key, None)
    # A plain image, not the opened file: that holds the encoded bytes and, for some formats, a
    # decoder with its own full-size buffer.
    return image.copy() if image is opened else image


@contextlib.contextmanager
def _decode_errors(fmt: str, limits: ImageLimits, param: str) -> Iterator[None]:
    """Map Pillow's failures to APIErrors: too many pixels to 413, corrupt data to 400."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(limits, param) from None
    except _CORRUPT:
        # Pillow's messages describe its internals; the client only needs to know the data is bad.
        raise bad_request(
            f"The image could not be decoded: the {fmt} data is corrupt or truncated.",
            param,
            "invalid_image",
        ) from None


def _sniff_format(data: bytes, param: str) -> str:
    head = data[:16]
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    seen = _describe_unsupported(data)
    raise bad_request(
        f"Unsupported image format{f' ({seen})' if seen else ''}; allowed formats are {', '.join(ALLOWED_FORMATS)}.",
        param,
        "unsupported_image_format",
    )


def _describe_unsupported(data: bytes) -> str | None:
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"%pdf"):
        return "PDF"
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG"
    if head.startswith((b"ii*\x00", b"mm\x00*")):
        return "TIFF"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    # Same header fields libwebp reads: simple lossy, lossless and extended.
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _check_dimensions(size: tuple[int, int] | None, limits: ImageLimits, param: str) -> None:
    if size is None:
        return
    width, height = size
    if width < 1 or height < 1:
        raise bad_request(f"The image has invalid dimensions {width}x{height}.", param, "invalid_image")
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise _too_many_pixels(limits, param, size)


def _too_many_pixels(limits: ImageLimits, param: str, size: tuple[int, int] | None = None) -> APIError:
    actual = f" ({size[0]}x{size[1]})" if size else ""
    return too_large(
        f"The image dimensions{actual} exceed the limit of {limits.max_pixels} pixels "
        f"and {limits.max_side} pixels per side.",
        param,
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        image = _scale_to_8_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _flatten_on_white(image.convert("RGBA"))
    return image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    # Pillow clips 16-bit samples to 255 when converting to 8 bits, which
    # turns most 16-bit greyscale images white; scale them instead.
    if image.mode == "I" and image.getextrema()[1] <= 0xFF:
        return image
    return image.convert("I").point(lambda value: value / 257)


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
