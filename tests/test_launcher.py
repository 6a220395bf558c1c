"""tools/launcher.py's port picking, without Ray."""

from __future__ import annotations

import socket

from tools.launcher import RAY_DEFAULT_PORTS, free_port


def test_a_free_port_is_bindable_and_never_one_ray_takes_by_default():
    port = free_port()
    assert port not in RAY_DEFAULT_PORTS
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 52365 in RAY_DEFAULT_PORTS, "the dashboard agent's port, taken once by the benchmark's Serve"


def test_ports_to_avoid_are_skipped():
    allowed = set(range(40000, 41000))
    avoid = frozenset(range(1, 65536)) - allowed
    assert {free_port(avoid) for _ in range(20)} <= allowed
