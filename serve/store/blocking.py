"""The store from synchronous code (Serve's autoscaling policy runs in the controller, not async).

`BlockingStore` keeps one `Store` on an event loop of its own, in a daemon thread, and runs its
coroutines there with a timeout, so a slow database never blocks the caller past it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from serve.store.store import Store

T = TypeVar("T")


class BlockingStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gigarouter-store", daemon=True)
        self._thread.start()
        self._store: Store | None = None

    def call(self, method: Callable[[Store], Awaitable[T]], timeout_s: float = 5.0) -> T:
        """Run `method(store)` on the store's loop and wait at most `timeout_s` (TimeoutError past it)."""

        async def run() -> Any:
            if self._store is None:
                self._store = Store(self.url)
            return await method(self._store)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)
