"""Address policy: classification only, no traffic."""

from __future__ import annotations

import ipaddress

import pydantic
import pytest

from serve.netguard import HostPolicy, ends_in_number, is_public_address, parse_host_address

NOT_PUBLIC = [
    # IPv4 special-purpose ranges
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",
    "169.254.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.1",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    # IPv6
    "::",
    "::1",
    "fd00::1",
    "fc00::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "100::1",
    "2001:db8::1",
    "3fff::1",
    "2001:2::1",
    "64:ff9b:1::a00:1",
    # IPv4 inside IPv6, judged by the embedded address
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo client 192.0.2.45 (documentation)
    "2001:0:7f00:1::",  # Teredo server 127.0.0.1
    # odd IPv4 spellings of loopback and metadata
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "127.1",
    "0177.0.0.1",
    "0",
    "0xa9fea9fe",
    "2852039166",
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",
    "100.128.0.1",
    "172.15.255.255",
    "172.32.0.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo, client 8.8.8.8
    "134744072",  # 8.8.8.8 as one number
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_not_public(address):
    assert is_public_address(address) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_public(address):
    assert is_public_address(address) is True


def test_accepts_ipaddress_objects():
    assert is_public_address(ipaddress.ip_address("8.8.8.8")) is True
    assert is_public_address(ipaddress.ip_address("::1")) is False


def test_rejects_non_addresses():
    with pytest.raises(ValueError):
        is_public_address("example.com")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("1.2.65535", "1.2.255.255"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[fd00::1]", "fd00::1"),
    ],
)
def test_parse_host_address_odd_forms(host, expected):
    assert parse_host_address(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.16777216",
        "4294967296",
        "08.1.1.1",
        "0x1g",
        "",
        "[example.com]",
        "1..2",
    ],
)
def test_parse_host_address_names_and_invalid(host):
    assert parse_host_address(host) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("999.1.1.1", True),
        ("1.2.3.4.5", True),
        ("a.0x1f", True),
        ("example.com", False),
        ("images.test.", False),
        ("1a.example", False),
    ],
)
def test_ends_in_number(host, expected):
    assert ends_in_number(host) is expected


def test_policy_default_is_public_only():
    policy = HostPolicy()
    assert policy.allows("example.com", "8.8.8.8")
    assert not policy.allows("example.com", "127.0.0.1")
    assert not policy.allows(None, "169.254.169.254")
    assert not policy.allows("metadata.google.internal", "169.254.169.254")


def test_policy_allow_ip_and_cidr():
    policy = HostPolicy(allow_hosts=["127.0.0.1", "10.0.0.0/8", "[fd00::1]"])
    assert policy.allows(None, "127.0.0.1")
    assert policy.allows("anything.test", "127.0.0.1")
    assert policy.allows(None, "::ffff:127.0.0.1")
    assert policy.allows(None, "10.20.30.40")
    assert policy.allows(None, "fd00::1")
    assert not policy.allows(None, "127.0.0.2")
    assert not policy.allows(None, "fd00::2")
    assert not policy.allows(None, "169.254.169.254")


def test_policy_allow_hostnames():
    policy = HostPolicy(allow_hosts=["Minio.Internal.", "*.corp.test"])
    assert policy.allow_hosts == ["minio.internal", "*.corp.test"]
    assert policy.allows("minio.internal", "10.1.2.3")
    assert policy.allows("MINIO.internal.", "10.1.2.3")
    assert policy.allows("img.corp.test", "192.168.0.5")
    assert not policy.allows("corp.test", "192.168.0.5")
    assert not policy.allows("evilcorp.test", "192.168.0.5")
    assert not policy.allows("other.internal", "10.1.2.3")
    # A name entry never opens IP-literal URLs.
    assert not policy.allows(None, "10.1.2.3")


def test_policy_numeric_entries_are_addresses():
    policy = HostPolicy(allow_hosts=["2130706433"])
    assert policy.allow_hosts == ["127.0.0.1"]
    assert policy.allows(None, "127.0.0.1")


@pytest.mark.parametrize(
    "entry", ["1.2.3.4.5", "exa mple.com", "10.0.0.0/33", "fe80::1%eth0", "bücher.example", "a..b"]
)
def test_policy_rejects_bad_entries(entry):
    with pytest.raises(pydantic.ValidationError):
        HostPolicy(allow_hosts=[entry])
