"""Demand counts persist in SQLite across store instances (restarts) and concurrent writers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from serve.demand import DemandStore


def test_counts_survive_a_new_store(tmp_path):
    path = tmp_path / "demand.sqlite3"
    first = DemandStore(path)
    assert first.record("a/model") == 1
    assert first.record("a/model") == 2
    first.record("b/model")
    assert DemandStore(path).counts() == {"a/model": 2, "b/model": 1}


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "demand.sqlite3"
    stores = [DemandStore(path) for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: stores[i % 4].record("m"), range(200)))
    assert DemandStore(path).counts() == {"m": 200}


def test_counts_since(tmp_path):
    store = DemandStore(tmp_path / "d.sqlite3")
    now = time.time()
    store.record("m", at=now - 3600)
    store.record("m", at=now)
    assert store.counts(since=now - 60) == {"m": 1}
    assert store.counts() == {"m": 2}
