"""Turn a client's image_url (data: URL or http(s) URL) into checked image bytes.

Everything here handles untrusted input in the ingress process: sizes are
checked before memory is committed, remote fetches can only reach addresses the
host policy allows, and every failure is an APIError that is safe to show.
Probing and decoding the bytes live in serve/image_codec.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import certifi
import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from serve.contract import EncodedImage
from serve.errors import APIError, bad_request, too_large
from serve.image_codec import decode_image, probe_image
from serve.netguard import AllowEntry, HostPolicy, IPAddress, ends_in_number, parse_host_address

logger = logging.getLogger("gigarouter.images")

# async (host, port) -> IP address strings, or getaddrinfo() 5-tuples.
Resolver = Callable[[str, int], Awaitable[Iterable[Any]]]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MEDIA_TYPE = re.compile(r"image/[a-z0-9][a-z0-9.+-]*")


class ImageLimits(BaseModel):
    """Operator limits for image inputs; the defaults suit a public endpoint."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(40_000_000, gt=0)
    max_side: int = Field(10_000, gt=0)
    fetch_connect_timeout_s: float = Field(3.0, gt=0)
    fetch_read_timeout_s: float = Field(5.0, gt=0)
    fetch_total_timeout_s: float = Field(10.0, gt=0)
    max_redirects: int = Field(3, ge=0)
    allow_hosts: list[AllowEntry] = Field(default_factory=list)
    allow_http: bool = Field(
        True, description="fetch http(s) image URLs at all; false: data: URLs only, nothing is resolved or fetched"
    )

    def host_policy(self) -> HostPolicy:
        """The address policy for fetches under these limits."""
        return HostPolicy(allow_hosts=self.allow_hosts)


async def load_encoded(url: str, limits: ImageLimits, param: str, *, resolver: Resolver | None = None) -> EncodedImage:
    """Load an image from a data: or http(s) URL and probe it: checked, but not decoded."""
    data = await load_bytes(url, limits, param, resolver=resolver)
    # Probing parses headers only (well under a millisecond, even for a 12 MP photo): no thread.
    return probe_image(data, limits, param)


async def load_image(url: str, limits: ImageLimits, param: str, *, resolver: Resolver | None = None) -> Image.Image:
    """Load an image from a data: or http(s) URL and return it decoded as RGB."""
    data = await load_bytes(url, limits, param, resolver=resolver)
    # Decoding is CPU-bound; keep it off the event loop.
    return await asyncio.to_thread(decode_image, data, limits, param)


async def load_bytes(url: str, limits: ImageLimits, param: str, *, resolver: Resolver | None = None) -> bytes:
    """The bytes of a data: URL, or fetched from an http(s) URL if the limits allow fetching."""
    if not isinstance(url, str):
        raise bad_request("image_url must be a string URL.", param, "invalid_image_url")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "data":
        return parse_data_url(url, limits, param)
    if scheme in ("http", "https"):
        if not limits.allow_http:
            raise bad_request(
                "This gateway does not fetch image URLs: send the image as a data:image/<type>;base64,... URL.",
                param,
                "image_url_forbidden",
            )
        return await fetch_image_bytes(url, limits, param, resolver=resolver)
    raise bad_request(
        "image_url must be an http(s) URL or a data:image/<type>;base64,... URL.",
        param,
        "invalid_image_url",
    )


# --- data: URLs -----------------------------------------------------------------------------


def parse_data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    """Decode a data:image/<type>;base64,<data> URL, checking the size before decoding."""
    if url[:5].lower() != "data:":
        raise _bad_data_url("it does not start with 'data:'", param)
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise _bad_data_url("there is no ',' before the data", param)
    media_type, *params = header.split(";")
    if not _MEDIA_TYPE.fullmatch(media_type.strip().lower()):
        raise _bad_data_url(f"the media type must be image/<type>, got {_clip(media_type)!r}", param)
    if [p.strip().lower() for p in params] != ["base64"]:
        raise _bad_data_url("the data must be base64-encoded (';base64,')", param)
    return _decode_base64(payload, limits, param)


def _decode_base64(payload: str, limits: ImageLimits, param: str) -> bytes:
    # Some encoders wrap base64 at 76 columns. str.split drops the same whitespace as a regex's \s,
    # and is ~50x faster: a regex scan of an 8 MB payload blocks the event loop for a quarter second.
    payload = "".join(payload.split())
    body = payload.rstrip("=")
    if len(body) * 3 // 4 > limits.max_bytes:
        raise too_large(f"The image is larger than the limit of {limits.max_bytes} bytes.", param)
    if not body or len(body) % 4 == 1:
        raise _bad_base64(param)
    try:
        # Re-pad so both padded and unpadded encoders are accepted.
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _bad_base64(param) from None


def _bad_data_url(reason: str, param: str) -> APIError:
    return bad_request(
        f"Invalid image data URL: {reason}. Expected data:image/<type>;base64,<data>.",
        param,
        "invalid_image_url",
    )


def _bad_base64(param: str) -> APIError:
    return bad_request("The image data URL does not contain valid base64 data.", param, "invalid_image")


# --- http(s) fetching -----------------------------------------------------------------------


async def fetch_image_bytes(url: str, limits: ImageLimits, param: str, *, resolver: Resolver | None = None) -> bytes:
    """Fetch an http(s) image URL, connecting only to policy-checked, pinned addresses."""
    target = _parse_fetch_url(url, param)
    try:
        async with asyncio.timeout(limits.fetch_total_timeout_s):
            return await _fetch_following_redirects(target, limits, param, resolver or _getaddrinfo)
    except TimeoutError:
        logger.info("image fetch from %s timed out", _host_of(target))
        raise _fetch_timeout(limits, param) from None


async def _fetch_following_redirects(target: httpx.URL, limits: ImageLimits, param: str, resolver: Resolver) -> bytes:
    policy = limits.host_policy()
    async with _client(limits) as client:
        for _ in range(limits.max_redirects + 1):
            address = await _checked_address(target, policy, resolver, param)
            result = await _request_once(client, target, address, limits, param)
            if isinstance(result, bytes):
                return result
            # Each hop gets the full URL, resolution and address checks again.
            target = _parse_fetch_url(result, param)
    logger.info("image fetch from %s exceeded %d redirects", _host_of(target), limits.max_redirects)
    raise bad_request(
        f"The image URL redirected more than {limits.max_redirects} times.",
        param,
        "image_fetch_failed",
    )


def _parse_fetch_url(url: str, param: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise bad_request("The image URL is not a valid URL.", param, "invalid_image_url") from None
    if target.scheme not in ("http", "https"):
        raise bad_request(
            f"The image URL scheme must be http or https, got {_clip(target.scheme)!r}.",
            param,
            "invalid_image_url",
        )
    if target.userinfo:
        raise bad_request("The image URL must not contain a username or password.", param, "invalid_image_url")
    host = _host_of(target)
    if not host or (parse_host_address(host) is None and not _is_dns_name(host)):
        raise bad_request("The image URL does not have a valid host.", param, "invalid_image_url")
    return target


def _host_of(target: httpx.URL) -> str:
    # raw_host is the IDNA (ASCII) form that DNS and TLS use.
    return target.raw_host.decode("ascii", "replace").lower().removesuffix(".")


def _is_dns_name(host: str) -> bool:
    labels = host.split(".")
    valid = all(re.fullmatch(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", label) for label in labels)
    return valid and len(host) <= 253 and not ends_in_number(host)


class AddressRefused(Exception):
    """A URL's host that must not be contacted: it did not resolve (`address` None), or one of its
    addresses is not allowed by the policy (`address`: the first refused one)."""

    def __init__(self, host: str, address: IPAddress | None) -> None:
        super().__init__(host)
        self.host, self.address = host, address


async def allowed_address(target: httpx.URL, policy: HostPolicy, resolver: Resolver | None = None) -> IPAddress:
    """The address to connect to for `target`: its host resolved (or an address literal), and
    `AddressRefused` unless every answer is allowed by `policy` (one internal answer makes the name
    untrustworthy). Image fetches and webhook deliveries both connect to this address, pinned."""
    host = _host_of(target)
    literal = parse_host_address(host)
    if literal is not None:
        addresses, hostname = [literal], None
    else:
        addresses, hostname = await _resolve(host, _port_of(target), resolver or _getaddrinfo), host
    if not addresses:
        raise AddressRefused(host, None)
    refused = [address for address in addresses if not policy.allows(hostname, address)]
    if refused:
        raise AddressRefused(host, refused[0])
    return addresses[0]


async def _checked_address(target: httpx.URL, policy: HostPolicy, resolver: Resolver, param: str) -> IPAddress:
    try:
        return await allowed_address(target, policy, resolver)
    except AddressRefused as refused:
        if refused.address is None:
            raise bad_request(
                f"The image URL host {_clip(refused.host)!r} could not be resolved.", param, "image_fetch_failed"
            ) from None
        # Refuse if any answer is internal: the name is not trustworthy.
        logger.warning("refused image fetch from %s: resolves to %s", refused.host, refused.address)
        raise bad_request(
            f"The image URL host {_clip(refused.host)!r} resolves to an address that is not allowed "
            "(private, loopback, link-local or otherwise non-public).",
            param,
            "image_url_forbidden",
        ) from None


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        answers = await resolver(host, port)
        return list(dict.fromkeys(_address_of(answer) for answer in answers))
    except (OSError, UnicodeError, ValueError) as exc:
        logger.info("could not resolve host %s: %s", host, exc)
        return []


def _address_of(answer: Any) -> IPAddress:
    # Accept getaddrinfo() tuples (family, type, proto, canonname, sockaddr)
    # as well as plain address strings from simpler resolvers.
    text = answer if isinstance(answer, str) else answer[4][0]
    return ipaddress.ip_address(text)


async def _getaddrinfo(host: str, port: int) -> list[Any]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _port_of(target: httpx.URL) -> int:
    return target.port or (443 if target.scheme == "https" else 80)


async def _request_once(
    client: httpx.AsyncClient,
    target: httpx.URL,
    address: IPAddress,
    limits: ImageLimits,
    param: str,
) -> bytes | str:
    # Connect to the address that was checked, not to the name: resolving
    # again at connect time would open a DNS-rebinding window. The Host
    # header and TLS SNI (which also drives certificate verification) still
    # carry the real name.
    host = _host_of(target)
    headers = {
        "Host": target.netloc.decode("ascii"),
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    is_name = parse_host_address(host) is None
    extensions = {"sni_hostname": host} if target.scheme == "https" and is_name else {}
    try:
        pinned = target.copy_with(host=str(address), fragment=None)
        async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
            return await _read_response(response, target, limits, param)
    except httpx.TimeoutException:
        logger.info("image fetch from %s timed out", host)
        raise _fetch_timeout(limits, param) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # The client gets a generic message; the log names the cause, and
        # only the host, since paths and queries can carry signed-URL tokens.
        logger.info("image fetch from %s failed: %s: %s", host, type(exc).__name__, exc)
        raise bad_request(
            f"Could not fetch the image from {_clip(host)!r}: the connection failed.",
            param,
            "image_fetch_failed",
        ) from None


async def _read_response(response: httpx.Response, target: httpx.URL, limits: ImageLimits, param: str) -> bytes | str:
    status = response.status_code
    location = response.headers.get("location")
    if status in _REDIRECT_STATUSES and location:
        try:
            return str(target.join(location))
        except httpx.InvalidURL:
            raise bad_request("The image URL redirected to an invalid URL.", param, "invalid_image_url") from None
    if not 200 <= status < 300:
        logger.info("image fetch from %s returned HTTP %d", _host_of(target), status)
        raise bad_request(
            f"Fetching the image URL failed: the server answered HTTP {status}.",
            param,
            "image_fetch_failed",
        )
    _check_headers(response, limits, param)
    return await _read_capped(response, limits, param)


def _check_headers(response: httpx.Response, limits: ImageLimits, param: str) -> None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Decompressing would let a small body expand far past max_bytes in
        # one chunk; identity was asked for, so refuse anything else.
        raise bad_request(
            f"The image server sent a compressed body (Content-Encoding: {_clip(encoding)}), which is not supported.",
            param,
            "image_fetch_failed",
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise _body_too_large(limits, param)


async def _read_capped(response: httpx.Response, limits: ImageLimits, param: str) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limits.max_bytes:
            raise _body_too_large(limits, param)
    return bytes(body)


def _client(limits: ImageLimits) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=limits.fetch_connect_timeout_s,
        read=limits.fetch_read_timeout_s,
        write=limits.fetch_read_timeout_s,
        pool=limits.fetch_connect_timeout_s,
    )
    return pinned_client(timeout)


def pinned_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """An HTTP client for requests to a checked, pinned address on a client's behalf (image fetches,
    webhooks)."""
    return httpx.AsyncClient(
        timeout=timeout,
        verify=_ssl_context(),
        # No proxies or .netrc credentials from the environment: a proxy
        # would undo the address pinning.
        trust_env=False,
        follow_redirects=False,
        # No connection reuse across hops: the pool is keyed by IP, and a
        # connection verified for one hostname must not serve another.
        limits=httpx.Limits(max_keepalive_connections=0),
    )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle is slow; share one context across fetches.
    return ssl.create_default_context(cafile=certifi.where())


def _fetch_timeout(limits: ImageLimits, param: str) -> APIError:
    return bad_request(
        f"Fetching the image URL timed out (limit {limits.fetch_total_timeout_s:g} s in total, "
        f"{limits.fetch_read_timeout_s:g} s per read).",
        param,
        "image_fetch_timeout",
    )


def _body_too_large(limits: ImageLimits, param: str) -> APIError:
    return too_large(f"The image at the URL is larger than the limit of {limits.max_bytes} bytes.", param)


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
