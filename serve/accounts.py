"""Who may call, and what they used: API keys from the store, budgets, and the usage ledger.

One `Accounts` per ingress replica. Keys live in the store (`python -m serve.keys`, the admin API)
and are cached here, re-read every `keys_refresh_s` (2 s), so a revoked or changed key takes
effect on every ingress replica within that time without a redeploy; a key not in the cache is
looked up at once (a key created a moment ago works), and a miss is remembered for the same time.
The env/file keys of `gateway.auth` keep working as bootstrap keys (no budget, every model; checked
by `serve.limits.Guard` before the store).

Budgets are enforced at admission: a request of a key with a budget is charged its cost (images
× the model's price per 1,000) in one atomic update that refuses once the key's spend has reached
its budget (`Store.charge`). Several ingress replicas therefore overrun a budget by at most the
cost of one request per replica racing at the moment the budget is crossed; a request that then
fails is refunded when its usage row is recorded. Usage rows go through a `UsageBuffer`: written
at least every second and on shutdown, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from serve.errors import APIError
from serve.store import KeyRecord, Store, StoreError, UsageBuffer, UsageRow, cost_usd, hash_secret

logger = logging.getLogger("gigarouter.accounts")


@dataclass(frozen=True)
class Caller:
    """The key a request was made with: its id, and what it may use (None: anything)."""

    key_id: str
    models: frozenset[str] | None = None
    budget_usd: float | None = None
    rate_limit: float | None = None
    admin: bool = False


def unauthorized(message: str, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, type="authentication_error", code=code, headers={"www-authenticate": "Bearer"})


def store_unavailable(what: str) -> APIError:
    return APIError(
        503,
        f"The gateway's database is unavailable, so {what}. Try again shortly.",
        type="service_unavailable_error",
        code="database_unavailable",
        headers={"Retry-After": "5"},
    )


class Accounts:
    """Key lookup, budget admission and usage recording over one `Store`."""

    def __init__(self, store: Store, keys_refresh_s: float = 2.0, usage_flush_s: float = 1.0) -> None:
        self.store = store
        self.keys_refresh_s = keys_refresh_s
        self.buffer = UsageBuffer(store, flush_interval_s=usage_flush_s)
        self._keys: dict[str, KeyRecord] = {}  # secret hash -> record
        self._misses: dict[str, float] = {}  # secret hash -> when a lookup last found nothing
        self._read_at = -1e9
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.buffer.start()
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.buffer.close()

    # ----- keys -----

    async def identify(self, secret: str) -> Caller:
        """The caller a secret belongs to; 401 (unknown, revoked with its reason, expired); 503 if
        the store cannot say."""
        hashed = hash_secret(secret)
        record = self._keys.get(hashed)
        if record is None:
            if time.monotonic() - self._misses.get(hashed, -1e9) < self.keys_refresh_s:
                raise unauthorized("Invalid API key. Send `Authorization: Bearer <key>` with a valid key.")
            try:
                record = await self.store.get_key_by_secret(secret)
            except StoreError:
                raise store_unavailable("the API key cannot be checked") from None
            if record is None:
                self._misses[hashed] = time.monotonic()
                if len(self._misses) > 10_000:
                    self._misses.clear()
                raise unauthorized("Invalid API key. Send `Authorization: Bearer <key>` with a valid key.")
            self._keys[hashed] = record
        refusal = record.refusal()
        if refusal is not None:
            code = "api_key_revoked" if record.revoked_at is not None else "api_key_expired"
            raise unauthorized(refusal, code)
        models = frozenset(record.models) if record.models is not None else None
        return Caller(record.id, models, record.budget_usd, record.rate_limit)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                records = await self.store.list_keys()
                self._keys = {r.secret_hash: r for r in records if r.secret_hash}
                self._misses.clear()
            except StoreError as error:
                logger.warning("could not refresh API keys (keeping the last ones): %s", error)
            except Exception:
                logger.exception("could not refresh API keys")
            await asyncio.sleep(self.keys_refresh_s)

    # ----- admission and usage -----

    async def admit(self, caller: Caller | None, model: str, images: int, price: float | None) -> float:
        """Check the caller may use `model` now; charge a key with a budget its cost. Returns the
        amount charged (to be settled by the usage row). 403 for a model the key may not use, 429
        `insufficient_quota` once its budget is reached, 503 if the store cannot say."""
        if caller is None:
            return 0.0
        if caller.models is not None and model not in caller.models:
            raise APIError(
                403,
                f"The API key {caller.key_id} may not use the model '{model}'.",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
        if caller.budget_usd is None:
            return 0.0
        cost, _ = cost_usd(images, price)
        try:
            charged = await self.store.charge(caller.key_id, cost)
        except StoreError:
            raise store_unavailable("the key's budget cannot be checked") from None
        if not charged:
            raise APIError(
                429,
                f"You exceeded your current quota: API key {caller.key_id} has used its budget of"
                f" ${caller.budget_usd:g}. Ask for a higher budget.",
                type="insufficient_quota",
                code="insufficient_quota",
            )
        return cost

    def record(self, row: UsageRow) -> None:
        """Queue one served request's usage (no I/O on the request path)."""
        self.buffer.add(row)
