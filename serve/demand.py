"""Demand signals ("tell us you want it"), kept in SQLite so they survive restarts and several ingress replicas."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS interest (
    model TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS interest_model_at ON interest (model, at);
"""


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the gateway's SQLite file in autocommit mode, closed on exit."""
    # One connection per call: SQLite connections are not shared across threads, and
    # several ingress replicas (processes) write the same file.
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


class DemandStore:
    """Counts interest per model in one SQLite file; every write is its own short transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with connect(self.path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def record(self, model: str, at: float | None = None) -> int:
        """Add one interest signal for a model; returns its new total."""
        with connect(self.path) as db:
            db.execute("INSERT INTO interest (model, at) VALUES (?, ?)", (model, at or time.time()))
            return db.execute("SELECT COUNT(*) FROM interest WHERE model = ?", (model,)).fetchone()[0]

    def counts(self, since: float | None = None) -> dict[str, int]:
        """Interest per model, all time or since a timestamp."""
        with connect(self.path) as db:
            rows = db.execute(
                "SELECT model, COUNT(*) FROM interest WHERE at >= ? GROUP BY model", (since or 0.0,)
            ).fetchall()
        return dict(rows)

    async def arecord(self, model: str) -> int:
        return await asyncio.to_thread(self.record, model)

    async def acounts(self, since: float | None = None) -> dict[str, int]:
        return await asyncio.to_thread(self.counts, since)
