"""Which network addresses the gateway may fetch from on a client's behalf.

The default is public unicast only: a client-supplied URL must never reach
loopback, the private network, cloud metadata endpoints or anything else that
sits behind the gateway. Operators can open specific hosts or ranges with
``HostPolicy.allow_hosts``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, PrivateAttr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# IANA special-purpose IPv4 ranges (RFC 6890 and successors) that are not
# reachable on the public internet, or that reach something local.
_IPV4_DENIED = (
    _V4("0.0.0.0/8"),  # "this network", includes the unspecified address
    _V4("10.0.0.0/8"),  # private
    _V4("100.64.0.0/10"),  # carrier-grade NAT
    _V4("127.0.0.0/8"),  # loopback
    _V4("169.254.0.0/16"),  # link-local, includes 169.254.169.254 metadata
    _V4("172.16.0.0/12"),  # private
    _V4("192.0.0.0/24"),  # IETF protocol assignments (DS-Lite, NAT64 discovery)
    _V4("192.0.2.0/24"),  # documentation TEST-NET-1
    _V4("192.88.99.0/24"),  # deprecated 6to4 relay anycast
    _V4("192.168.0.0/16"),  # private
    _V4("198.18.0.0/15"),  # benchmarking
    _V4("198.51.100.0/24"),  # documentation TEST-NET-2
    _V4("203.0.113.0/24"),  # documentation TEST-NET-3
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, includes 255.255.255.255 broadcast
)

# Only 2000::/3 is allocated global unicast; everything outside it (loopback,
# unspecified, fc00::/7 ULA, fe80::/10 link-local, fec0::/10 site-local,
# ff00::/8 multicast, 100::/64 discard, 64:ff9b:1::/48 local NAT64, ...) is
# refused by that rule alone, after the IPv4 embeddings below are unpacked.
_IPV6_GLOBAL_UNICAST = _V6("2000::/3")
_IPV6_DENIED = (
    _V6("2001::/23"),  # IETF protocol assignments (Teredo is judged before this)
    _V6("2001:db8::/32"),  # documentation
    _V6("3fff::/20"),  # documentation (RFC 9637)
)
_IPV4_MAPPED = _V6("::ffff:0:0/96")
_NAT64_WELL_KNOWN = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")
_TEREDO = _V6("2001::/32")

_DECIMAL = re.compile(r"[1-9][0-9]*|0")
_OCTAL = re.compile(r"0[0-7]+")
_HEX = re.compile(r"0x[0-9a-f]*")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


def parse_host_address(host: str) -> IPAddress | None:
    """Return the IP address a URL host denotes, or None if it is a name."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _parse_inet_aton(text.removesuffix("."))


def _parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    # The C resolver (inet_aton) accepts 1 to 4 dot-separated parts in decimal,
    # octal (leading 0) or hex (0x), the last part filling the remaining bytes:
    # 127.1, 0177.0.0.1, 0x7f000001 and 2130706433 all mean 127.0.0.1. Parsing
    # them here keeps them from being treated as hostnames.
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_parse_aton_part(part) for part in parts]
    if any(value is None for value in values):
        return None
    *head, last = values
    if any(value > 0xFF for value in head) or last >= 1 << (8 * (5 - len(parts))):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _parse_aton_part(part: str) -> int | None:
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part):
        return int(part)
    return None


def ends_in_number(host: str) -> bool:
    """True if a host that is not a valid IP still looks numeric (and so is not a usable name)."""
    # WHATWG URL rule: a host whose last label is numeric is parsed as IPv4 or
    # rejected, so something like 999.1.1.1 or 1.2.3.0x1g must not be resolved.
    labels = host.strip().lower().removesuffix(".").split(".")
    last = labels[-1]
    return bool(re.fullmatch(r"[0-9]+|0x[0-9a-f]*", last))


def as_address(ip: str | IPAddress) -> IPAddress:
    """Coerce an address or any host string parse_host_address accepts; ValueError otherwise."""
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip
    address = parse_host_address(ip)
    if address is None:
        raise ValueError(f"not an IP address: {ip!r}")
    return address


def is_public_address(ip: str | IPAddress) -> bool:
    """True only for globally routable unicast addresses (embedded IPv4 judged on its own)."""
    address = as_address(ip)
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_is_public(address)
    return _ipv6_is_public(address)


def _ipv4_is_public(address: ipaddress.IPv4Address) -> bool:
    if any(address in network for network in _IPV4_DENIED):
        return False
    # The stdlib tables follow the IANA registry; keep them as a second opinion.
    return address.is_global and not address.is_multicast


def _ipv6_is_public(address: ipaddress.IPv6Address) -> bool:
    if address.scope_id:
        return False
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return all(_ipv4_is_public(inner) for inner in embedded)
    if address not in _IPV6_GLOBAL_UNICAST:
        return False
    return not any(address in network for network in _IPV6_DENIED)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    # These forms carry an IPv4 destination; ::ffff:127.0.0.1 is loopback no
    # matter how it is spelled, and a translator or tunnel would deliver
    # 64:ff9b::a9fe:a9fe to the metadata service.
    if address in _IPV4_MAPPED:
        return (address.ipv4_mapped,)
    if address in _NAT64_WELL_KNOWN:
        return (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF),)
    if address in _SIX_TO_FOUR:
        return (address.sixtofour,)
    if address in _TEREDO:
        return address.teredo
    return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_allow_entry(entry: str) -> str:
    """Validate one allow_hosts entry (hostname, *.suffix, IP or CIDR) and return it normalized."""
    text = entry.strip().lower()
    if "/" in text:
        try:
            return str(ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            raise ValueError(f"allow_hosts entry {entry!r} is not a valid CIDR range") from None
    address = parse_host_address(text)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(f"allow_hosts entry {entry!r}: scoped IPv6 addresses are not supported")
        # Resolved IPv4-mapped addresses are compared in their IPv4 form.
        return str(_unmapped(address))
    name = text.removesuffix(".")
    if not name.isascii() or not _HOSTNAME.fullmatch(name) or ends_in_number(name):
        raise ValueError(
            f"allow_hosts entry {entry!r} is not a hostname, IP address or CIDR range "
            "(write internationalized names in punycode)"
        )
    return name


AllowEntry = Annotated[str, AfterValidator(normalize_allow_entry)]


class HostPolicy(BaseModel):
    """Public addresses are allowed; allow_hosts opens named hosts, IPs and CIDR ranges too."""

    allow_hosts: list[AllowEntry] = Field(default_factory=list)

    _networks: list[IPNetwork] = PrivateAttr(default_factory=list)
    _names: set[str] = PrivateAttr(default_factory=set)
    _suffixes: list[str] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: object) -> None:
        for entry in self.allow_hosts:
            if entry.startswith("*."):
                self._suffixes.append(entry[1:])
            elif parse_host_address(entry) is not None or "/" in entry:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                self._names.add(entry)

    def allows(self, hostname: str | None, ip: str | IPAddress) -> bool:
        """Whether ip, resolved from hostname (None for IP-literal URLs), may be connected to."""
        address = as_address(ip)
        if hostname is not None and self._name_allowed(hostname):
            return True
        if any(_unmapped(address) in network for network in self._networks):
            return True
        return is_public_address(address)

    def _name_allowed(self, hostname: str) -> bool:
        name = hostname.strip().lower().removesuffix(".")
        return name in self._names or any(name.endswith(suffix) for suffix in self._suffixes)
