"""`UsageBuffer`: usage rows kept in memory and written to the store in batches, off the request path.

    buffer = UsageBuffer(store)          # in the process's event loop
    await buffer.start()
    buffer.add(row)                      # on the request path: an append, no I/O
    ...
    await buffer.close()                 # on shutdown: the last flush, retried for up to timeout_s

Rows are flushed at least every `flush_interval_s` (1 s), sooner once `batch_rows` are waiting,
and on `close()`. A flush that fails (database unreachable, locked, restarting) puts its rows back
in order and the next one retries them; `Store.record_usage` is idempotent on `request_id`, so a
flush whose commit succeeded but whose answer was lost counts nothing twice on retry.

What can be lost: on a crash, the rows not yet flushed (at most about one flush interval's worth,
or everything since the database went away); on a graceful shutdown, nothing if the database
answers within `close()`'s timeout. The buffer holds at most `max_rows`; past that the oldest rows
are dropped and an error is logged (at most once per flush interval).

`add` is not thread-safe: call it from the event loop the buffer was started in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from contextlib import suppress

from serve.store.records import UsageRow
from serve.store.schema import from_nano, to_nano
from serve.store.store import Store

logger = logging.getLogger(__name__)


class UsageBuffer:
    """Buffered, retried, idempotent writes of usage rows; see the module docstring."""

    def __init__(
        self, store: Store, flush_interval_s: float = 1.0, max_rows: int = 100_000, batch_rows: int = 5_000
    ) -> None:
        if flush_interval_s <= 0 or max_rows < 1 or batch_rows < 1:
            raise ValueError("flush_interval_s must be > 0, max_rows and batch_rows >= 1")
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.max_rows = max_rows
        self.batch_rows = batch_rows
        self.dropped = 0  # rows dropped because the buffer was full, since the start
        self.flushed = 0  # rows written (new to the store), since the start
        self._rows: deque[UsageRow] = deque()
        self._unflushed_nano: dict[str, int] = defaultdict(int)  # per key: cost not yet in the store
        self._dropped_unlogged = 0
        self._in_flight = 0  # rows taken out for the flush running now
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None

    @property
    def pending(self) -> int:
        """Rows not yet written (those of a flush in progress included)."""
        return len(self._rows) + self._in_flight

    def unflushed_cost_usd(self, key_id: str) -> float:
        """Cost of this key's buffered rows that the store's spend does not include yet (for
        `Store.over_budget`: add it to see this replica's own requests at once)."""
        return from_nano(self._unflushed_nano.get(key_id, 0)) or 0.0

    def add(self, row: UsageRow) -> None:
        """Queue one row (no I/O)."""
        self._rows.append(row)
        self._count(row, +1)
        self._trim()
        if len(self._rows) >= self.batch_rows:
            self._wake.set()

    async def start(self) -> None:
        """Start flushing in the background (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-buffer")

    async def flush(self) -> int:
        """Write every buffered row now; returns how many were new to the store. On failure the
        rows stay buffered (in order) and the error is raised."""
        written = 0
        async with self._lock:
            self._log_dropped()
            while self._rows:
                batch = [self._rows.popleft() for _ in range(min(self.batch_rows, len(self._rows)))]
                self._in_flight = len(batch)
                try:
                    written += await self.store.record_usage(batch)
                except BaseException:  # cancelled too: the rows go back; a retry cannot double-count
                    self._rows.extendleft(reversed(batch))
                    self._trim()
                    raise
                finally:
                    self._in_flight = 0
                for row in batch:
                    self._count(row, -1)
            self.flushed += written
        return written

    async def close(self, timeout_s: float = 10.0) -> int:
        """Stop the background flushes and write what is left, retrying until `timeout_s` has
        passed; returns the number of rows that could not be written (and are lost)."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + timeout_s
        while self._rows:
            try:
                await self.flush()
            except Exception as error:  # noqa: BLE001 - retried until the deadline, then reported
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.error("usage buffer closing: %d rows not written (%s)", len(self._rows), error)
                    return len(self._rows)
                await asyncio.sleep(min(0.5, left))
        return 0

    async def _run(self) -> None:
        while True:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as error:  # noqa: BLE001 - kept and retried at the next tick
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    logger.warning("usage flush failed, %d rows kept for the next try: %s", len(self._rows), error)
                continue
            if self._failing_since is not None:
                logger.warning("usage flushes work again after %.1f s", time.monotonic() - self._failing_since)
                self._failing_since = None

    def _count(self, row: UsageRow, sign: int) -> None:
        if row.key_id is not None:
            self._unflushed_nano[row.key_id] += sign * (to_nano(row.cost_usd) - to_nano(row.charged_usd))
            if not self._unflushed_nano[row.key_id]:
                del self._unflushed_nano[row.key_id]

    def _trim(self) -> None:
        while len(self._rows) > self.max_rows:
            self._count(self._rows.popleft(), -1)
            self.dropped += 1
            self._dropped_unlogged += 1

    def _log_dropped(self) -> None:
        if self._dropped_unlogged:
            logger.error(
                "usage buffer full (%d rows): dropped the %d oldest rows; the store has been unreachable too long",
                self.max_rows,
                self._dropped_unlogged,
            )
            self._dropped_unlogged = 0
