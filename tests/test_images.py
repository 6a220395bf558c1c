"""Image inputs: data URLs, decoding limits and formats, guarded fetching (loopback only)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import logging
import socket
import ssl
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydantic
import pytest
from PIL import Image

from serve import images
from serve.contract import EncodedImage
from serve.errors import APIError
from serve.images import ImageLimits, decode_image, fetch_image_bytes, load_encoded, load_image, parse_data_url

PARAM = "messages[0].content[1].image_url"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def data_url(payload: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(payload).decode()}"


def png_header(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose IHDR claims the given size, with a tiny IDAT: no pixels behind the claim."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def expect_error(status: int, code: str | None, call, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as info:
        result = call(*args, **kwargs)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    error = info.value
    assert (error.status, error.code, error.param) == (status, code, PARAM), error.message
    return error


RED_PNG = encode(Image.new("RGB", (3, 2), (255, 0, 0)), "PNG")
LIMITS = ImageLimits()


# --- limits ---------------------------------------------------------------------------------


def test_limit_defaults():
    assert LIMITS.max_bytes == 20 * 1024 * 1024
    assert LIMITS.max_pixels == 40_000_000
    assert LIMITS.max_redirects == 3
    assert LIMITS.allow_hosts == []


def test_limits_validate_allow_hosts_and_values():
    assert ImageLimits(allow_hosts=["LocalHost", "0x7f000001"]).allow_hosts == [
        "localhost",
        "127.0.0.1",
    ]
    with pytest.raises(pydantic.ValidationError):
        ImageLimits(allow_hosts=["not a host"])
    with pytest.raises(pydantic.ValidationError):
        ImageLimits(max_bytes=0)
    with pytest.raises(pydantic.ValidationError):
        ImageLimits(max_byte=5)


# --- data URLs ------------------------------------------------------------------------------


def test_data_url_roundtrip():
    assert parse_data_url(data_url(RED_PNG), LIMITS, PARAM) == RED_PNG


def test_data_url_tolerates_wrapping_and_missing_padding():
    encoded = base64.b64encode(RED_PNG).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert parse_data_url(f"DATA:Image/PNG;BASE64,{wrapped}", LIMITS, PARAM) == RED_PNG
    assert parse_data_url(f"data:image/png;base64,{encoded.rstrip('=')}", LIMITS, PARAM) == RED_PNG


@pytest.mark.parametrize("payload", ["!!!!", "ab=c", "a", "QUJD$A==", "QQ==QQ==", "", "===="])
def test_data_url_bad_base64(payload):
    expect_error(400, "invalid_image", parse_data_url, f"data:image/png;base64,{payload}", LIMITS, PARAM)


@pytest.mark.parametrize(
    "url",
    [
        "data:text/plain;base64,aGVsbG8=",
        "data:application/pdf;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:image/png;charset=utf-8;base64,aGVsbG8=",
        "data:;base64,aGVsbG8=",
        "data:image/png;base64",
        "image/png;base64,aGVsbG8=",
    ],
)
def test_data_url_bad_shape(url):
    error = expect_error(400, "invalid_image_url", parse_data_url, url, LIMITS, PARAM)
    assert "data:image/<type>;base64" in error.message


def test_data_url_oversize_is_rejected_before_decoding(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an oversize payload")

    monkeypatch.setattr(images.base64, "b64decode", no_decoding)
    limits = ImageLimits(max_bytes=100)
    error = expect_error(413, "too_large", parse_data_url, data_url(b"\0" * 101), limits, PARAM)
    assert "100 bytes" in error.message


def test_data_url_at_the_limit_is_accepted():
    assert parse_data_url(data_url(b"\1" * 100), ImageLimits(max_bytes=100), PARAM) == b"\1" * 100


# --- decoding -------------------------------------------------------------------------------


def decode(data: bytes, limits: ImageLimits = LIMITS) -> Image.Image:
    image = decode_image(data, limits, PARAM)
    assert image.mode == "RGB"
    return image


def test_decode_png():
    image = decode(RED_PNG)
    assert image.size == (3, 2)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_decode_jpeg_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (40, 20), (0, 0, 255)), "JPEG", exif=exif)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    assert decode(data).size == (20, 40)


def test_decode_webp():
    image = decode(encode(Image.new("RGB", (5, 4), (0, 255, 0)), "WEBP", lossless=True))
    assert image.size == (5, 4)
    assert image.getpixel((2, 2)) == (0, 255, 0)


def test_decode_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (6, 6), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert decode(data).getpixel((3, 3)) == (255, 0, 0)


def test_decode_bmp():
    assert decode(encode(Image.new("RGB", (7, 3), (1, 2, 3)), "BMP")).getpixel((0, 0)) == (1, 2, 3)


def test_palette_to_rgb():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert decode(encode(image, "PNG")).getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_jpeg_to_rgb():
    data = encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert all(channel >= 250 for channel in decode(data).getpixel((4, 4)))


def test_rgba_composited_on_white():
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 128))
    decoded = decode(encode(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert all(126 <= channel <= 128 for channel in decoded.getpixel((1, 0)))


def test_la_and_palette_transparency_composited_on_white():
    assert decode(encode(Image.new("LA", (2, 2), (0, 0)), "PNG")).getpixel((0, 0)) == (
        255,
        255,
        255,
    )
    gif = encode(Image.new("P", (2, 2), 0), "GIF", transparency=0)
    assert decode(gif).getpixel((1, 1)) == (255, 255, 255)


def test_16_bit_grey_is_scaled_not_clipped():
    image = Image.new("I;16", (2, 1))
    image.putpixel((0, 0), 65535)
    image.putpixel((1, 0), 32896)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode(data)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 0)) == (128, 128, 128)


def test_truncated_png():
    noisy = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    data = encode(noisy, "PNG")
    error = expect_error(400, "invalid_image", decode_image, data[: len(data) // 2], LIMITS, PARAM)
    assert "PNG" in error.message


def test_corrupt_jpeg():
    data = encode(Image.new("RGB", (32, 32)), "JPEG")
    expect_error(400, "invalid_image", decode_image, data[:40], LIMITS, PARAM)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF"),
        (b"hello, world", None),
        (b"", None),
    ],
)
def test_unsupported_formats(data, named):
    error = expect_error(400, "unsupported_image_format", decode_image, data, LIMITS, PARAM)
    assert "PNG, JPEG, WebP, GIF, BMP" in error.message
    if named:
        assert named in error.message


def test_tiff_is_refused_even_when_pillow_could_read_it():
    data = encode(Image.new("RGB", (2, 2)), "TIFF")
    expect_error(400, "unsupported_image_format", decode_image, data, LIMITS, PARAM)


def test_bomb_over_our_pixel_limit():
    started = time.monotonic()
    error = expect_error(413, "too_large", decode_image, png_header(7000, 7000), LIMITS, PARAM)
    assert "7000x7000" in error.message
    assert time.monotonic() - started < 1


def test_bomb_over_our_side_limit():
    expect_error(413, "too_large", decode_image, png_header(20000, 10), LIMITS, PARAM)


def test_small_limits_apply_to_real_images():
    limits = ImageLimits(max_pixels=5)
    expect_error(413, "too_large", decode_image, RED_PNG, limits, PARAM)


def test_pillow_bomb_error_maps_to_413():
    # Our limits opened wide, so Pillow's own check is the one that fires.
    limits = ImageLimits(max_pixels=10**12, max_side=10**6)
    expect_error(413, "too_large", decode_image, png_header(100_000, 100_000), limits, PARAM)


def test_pillow_bomb_warning_maps_to_413():
    limits = ImageLimits(max_pixels=10**12, max_side=10**6)
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    expect_error(413, "too_large", decode_image, png_header(10_000, 10_000), limits, PARAM)


def test_webp_canvas_checked_before_libwebp_allocates():
    width = height = 16000
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    error = expect_error(413, "too_large", decode_image, data, LIMITS, PARAM)
    assert "16000x16000" in error.message


def test_load_image_from_data_url():
    image = asyncio.run(load_image(data_url(RED_PNG), LIMITS, PARAM))
    assert image.size == (3, 2)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/a.png", "file:///etc/passwd", "javascript:alert(1)", "/relative.png", ""],
)
def test_load_image_refuses_other_schemes(url):
    expect_error(400, "invalid_image_url", load_image, url, LIMITS, PARAM)
    expect_error(400, "invalid_image_url", load_encoded, url, LIMITS, PARAM)


def test_load_encoded_probes_without_decoding():
    encoded = asyncio.run(load_encoded(data_url(RED_PNG), LIMITS, PARAM))
    assert encoded == EncodedImage(RED_PNG, "PNG", 3, 2)
    # Only the header is read: image data cut short still probes.
    truncated = encode(Image.new("RGB", (300, 200)), "PNG")[:60]
    assert asyncio.run(load_encoded(data_url(truncated), LIMITS, PARAM)).size == (300, 200)


def test_load_encoded_refuses_bombs_and_unsupported_formats():
    expect_error(413, "too_large", load_encoded, data_url(png_header(50_000, 50_000)), LIMITS, PARAM)
    expect_error(400, "unsupported_image_format", load_encoded, data_url(b"%PDF-1.7\n"), LIMITS, PARAM)


def test_load_encoded_refuses_fetching_when_http_is_off():
    limits = ImageLimits(allow_http=False)
    expect_error(400, "image_url_forbidden", load_encoded, "https://example.com/a.png", limits, PARAM)


# --- fetching from a local server -----------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        # Clients hang up on purpose in these tests (timeouts, size cut-offs).
        pass


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host")))
        route = getattr(self, "route_" + self.path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            self.reply(404, b"secret internal details")
        else:
            route()

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location):
        self.reply(302, headers=[("Location", location)])

    def route_img_png(self):
        self.reply(200, RED_PNG, [("Content-Type", "image/png")])

    def route_redirect_internal(self):
        self.redirect(f"http://internal.test:{self.server.server_port}/img.png")

    def route_redirect_relative(self):
        self.redirect("/img.png")

    def route_redirect_loop(self):
        self.redirect("/redirect-loop")

    def route_redirect_ftp(self):
        self.redirect("ftp://127.0.0.1/img.png")

    def route_slow(self):
        self.server.release.wait(5)
        self.reply(200, RED_PNG)

    def route_drip(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        while not self.server.release.wait(0.05):
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_big(self):
        # No Content-Length: the size is only known by reading.
        self.send_response(200)
        self.end_headers()
        for _ in range(16):
            self.wfile.write(b"\0" * 65536)

    def route_big_declared(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()

    def route_gzip(self):
        self.reply(200, zlib.compress(b"\0" * 1000), [("Content-Encoding", "gzip")])


def _start(server: _Server) -> _Server:
    server.requests = []
    server.release = threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def _stop(server: _Server) -> None:
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server():
    running = _start(_Server(("127.0.0.1", 0), _Handler))
    yield running
    _stop(running)


@pytest.fixture
def base(server):
    server.requests.clear()
    return f"http://127.0.0.1:{server.server_port}"


def fetch_limits(**overrides) -> ImageLimits:
    settings = dict(
        allow_hosts=["127.0.0.1"],
        fetch_connect_timeout_s=1,
        fetch_read_timeout_s=1,
        fetch_total_timeout_s=2,
    )
    return ImageLimits(**(settings | overrides))


def resolver_for(mapping: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int):
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return mapping[host]

    return resolve


async def _never_resolve(host, port):
    raise AssertionError(f"resolved {host}")


def fetch(url, limits, **kwargs):
    return asyncio.run(fetch_image_bytes(url, limits, PARAM, **kwargs))


def test_loopback_refused_by_default(server, base):
    error = expect_error(400, "image_url_forbidden", fetch_image_bytes, f"{base}/img.png", LIMITS, PARAM)
    assert "not allowed" in error.message
    assert server.requests == []


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "[::1]", "[::ffff:127.0.0.1]"])
def test_loopback_spellings_refused_without_resolving(server, base, host):
    url = f"http://{host}:{server.server_port}/img.png"
    expect_error(400, "image_url_forbidden", fetch_image_bytes, url, LIMITS, PARAM, resolver=_never_resolve)
    assert server.requests == []


def test_allowlisted_loopback_fetches(server, base):
    assert fetch(f"{base}/img.png", fetch_limits()) == RED_PNG
    image = asyncio.run(load_image(f"{base}/img.png", fetch_limits(), PARAM))
    assert image.size == (3, 2)
    assert asyncio.run(load_encoded(f"{base}/img.png", fetch_limits(), PARAM)) == EncodedImage(RED_PNG, "PNG", 3, 2)


def test_connects_to_the_checked_address_with_the_real_host_header(server, base):
    calls: list[str] = []
    resolver = resolver_for({"images.test": ["127.0.0.1"]}, calls)
    url = f"http://images.test:{server.server_port}/img.png"
    assert fetch(url, fetch_limits(), resolver=resolver) == RED_PNG
    assert calls == ["images.test"]
    assert server.requests == [("/img.png", f"images.test:{server.server_port}")]


def test_getaddrinfo_shaped_answers_are_accepted(server, base):
    port = server.server_port
    answer = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    resolver = resolver_for({"images.test": answer})
    assert fetch(f"http://images.test:{port}/img.png", fetch_limits(), resolver=resolver) == RED_PNG


def test_default_resolver_returns_getaddrinfo_answers():
    # A numeric host: getaddrinfo answers without any DNS traffic.
    answers = asyncio.run(images._getaddrinfo("127.0.0.1", 80))
    assert {str(images._address_of(answer)) for answer in answers} == {"127.0.0.1"}


def test_any_internal_answer_refuses_the_name(server, base):
    resolver = resolver_for({"mixed.test": ["127.0.0.1", "10.0.0.1"]})
    url = f"http://mixed.test:{server.server_port}/img.png"
    expect_error(400, "image_url_forbidden", fetch_image_bytes, url, fetch_limits(), PARAM, resolver=resolver)
    assert server.requests == []


def test_unresolvable_host(base):
    resolver = resolver_for({})
    error = expect_error(
        400,
        "image_fetch_failed",
        fetch_image_bytes,
        "http://nowhere.test/x.png",
        LIMITS,
        PARAM,
        resolver=resolver,
    )
    assert "could not be resolved" in error.message


def test_redirect_to_non_allowlisted_host_refused(server, base):
    resolver = resolver_for({"internal.test": ["127.0.0.2"]})
    expect_error(
        400,
        "image_url_forbidden",
        fetch_image_bytes,
        f"{base}/redirect-internal",
        fetch_limits(),
        PARAM,
        resolver=resolver,
    )
    assert [path for path, _ in server.requests] == ["/redirect-internal"]


def test_relative_redirect_followed(server, base):
    assert fetch(f"{base}/redirect-relative", fetch_limits()) == RED_PNG
    assert [path for path, _ in server.requests] == ["/redirect-relative", "/img.png"]


def test_redirect_limit(server, base):
    error = expect_error(
        400,
        "image_fetch_failed",
        fetch_image_bytes,
        f"{base}/redirect-loop",
        fetch_limits(max_redirects=2),
        PARAM,
    )
    assert "more than 2 times" in error.message
    assert len(server.requests) == 3


def test_redirect_to_other_scheme_refused(base):
    expect_error(400, "invalid_image_url", fetch_image_bytes, f"{base}/redirect-ftp", fetch_limits(), PARAM)


def test_slow_response_times_out(base):
    limits = fetch_limits(fetch_read_timeout_s=0.3)
    started = time.monotonic()
    expect_error(400, "image_fetch_timeout", fetch_image_bytes, f"{base}/slow", limits, PARAM)
    assert time.monotonic() - started < 1.5


def test_dripping_body_hits_total_timeout(base):
    limits = fetch_limits(fetch_read_timeout_s=1, fetch_total_timeout_s=0.4)
    started = time.monotonic()
    error = expect_error(400, "image_fetch_timeout", fetch_image_bytes, f"{base}/drip", limits, PARAM)
    assert time.monotonic() - started < 1.5
    assert "0.4 s" in error.message


def test_oversize_body_cut_off(base):
    limits = fetch_limits(max_bytes=100_000)
    error = expect_error(413, "too_large", fetch_image_bytes, f"{base}/big", limits, PARAM)
    assert "100000 bytes" in error.message


def test_oversize_declared_length_refused(base):
    expect_error(413, "too_large", fetch_image_bytes, f"{base}/big-declared", fetch_limits(), PARAM)


def test_compressed_body_refused(base):
    expect_error(400, "image_fetch_failed", fetch_image_bytes, f"{base}/gzip", fetch_limits(), PARAM)


def test_non_2xx(base):
    error = expect_error(400, "image_fetch_failed", fetch_image_bytes, f"{base}/missing", fetch_limits(), PARAM)
    assert "HTTP 404" in error.message
    assert "secret" not in error.message


def test_connection_refused(base):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = expect_error(
        400,
        "image_fetch_failed",
        fetch_image_bytes,
        f"http://127.0.0.1:{port}/x.png",
        fetch_limits(),
        PARAM,
    )
    assert "connection failed" in error.message


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://127.0.0.1/img.png", "invalid_image_url"),
        ("file:///etc/passwd", "invalid_image_url"),
        ("http://user:secret@127.0.0.1/img.png", "invalid_image_url"),
        ("http:///img.png", "invalid_image_url"),
        ("http://999.1.1.1/img.png", "invalid_image_url"),
        ("http://exa mple.test/img.png", "invalid_image_url"),
        ("http://[::1/img.png", "invalid_image_url"),
    ],
)
def test_bad_fetch_urls(url, code):
    error = expect_error(400, code, fetch_image_bytes, url, LIMITS, PARAM, resolver=_never_resolve)
    assert "secret" not in error.message


# --- https: the pinned IP is verified against the real hostname --------------------------------


def _make_tls_files(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build(
        "test ca",
        "test ca",
        ca_key.public_key(),
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        ],
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = build(
        "images.test",
        "test ca",
        leaf_key.public_key(),
        ca_key,
        [
            (x509.SubjectAlternativeName([x509.DNSName("images.test")]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    pem = serialization.Encoding.PEM
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(pem).decode(), directory / "leaf.pem", directory / "leaf.key"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    ca_pem, cert, key = _make_tls_files(tmp_path_factory.mktemp("tls"))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.sni_names = []
    server_context.sni_callback = lambda sock, name, ctx: server.sni_names.append(name)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cadata=ca_pem)
    yield _start(server), client_context
    _stop(server)


def test_https_verifies_the_hostname_on_the_pinned_ip(tls_server, monkeypatch, caplog):
    server, client_context = tls_server
    caplog.set_level(logging.INFO, logger="gigarouter.images")
    monkeypatch.setattr(images, "_ssl_context", lambda: client_context)
    resolver = resolver_for({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    port = server.server_port
    assert fetch(f"https://images.test:{port}/img.png", fetch_limits(), resolver=resolver) == RED_PNG
    assert "images.test" in server.sni_names
    # Same IP, but the certificate does not cover this name: verification must fail.
    expect_error(
        400,
        "image_fetch_failed",
        fetch_image_bytes,
        f"https://other.test:{port}/img.png",
        fetch_limits(),
        PARAM,
        resolver=resolver,
    )
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
