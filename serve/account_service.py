"""Usage reports and key management, transport-free like `serve.service` (the HTTP routes are in
serve/routers/accounts.py; the CLI `python -m serve.keys` works on the store directly)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from serve.account_protocol import (
    GroupBy,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyUpdate,
    UsageGroup,
    UsageReport,
)
from serve.accounts import store_unavailable
from serve.context import CallerContext
from serve.errors import APIError, bad_request
from serve.store import KeyRecord, Store, StoreError, UnknownKey


def key_out(record: KeyRecord) -> KeyOut:
    return KeyOut.model_validate({k: v for k, v in asdict(record).items() if k != "secret_hash"})


class AccountService:
    """What a caller may ask about keys and usage."""

    def __init__(self, store: Store, auth: bool) -> None:
        self.store = store
        self.auth = auth

    def require_admin(self, context: CallerContext) -> None:
        caller = context.caller
        if caller is None or not getattr(caller, "admin", False):
            reason = "an admin key" if self.auth else "auth on and an admin key (gateway.auth)"
            raise APIError(403, f"Managing API keys needs {reason}.", type="permission_error", code="admin_only")

    async def usage(
        self,
        context: CallerContext,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: GroupBy = "model",
        key_id: str | None = None,
    ) -> UsageReport:
        """A caller's own usage; an admin's (or, with auth off, anyone's) of every key or of `key_id`."""
        if start is not None and end is not None and end <= start:
            raise bad_request("end must be after start", param="end")
        is_admin = context.caller is not None and getattr(context.caller, "admin", False)
        if self.auth and not is_admin:
            if key_id is not None and key_id != context.key_id:
                raise APIError(403, "Only an admin key reads another key's usage.", type="permission_error",
                               param="key_id", code="admin_only")
            key_id = context.key_id
        try:
            totals = await self.store.usage_totals(start, end, group_by, key_id)
        except StoreError:
            raise store_unavailable("usage cannot be read") from None
        data = [UsageGroup.model_validate(total.to_json()) for total in totals]
        return UsageReport(group_by=group_by, key_id=key_id, start=start, end=end, data=data)

    async def list_keys(self, context: CallerContext) -> KeyList:
        self.require_admin(context)
        return KeyList(data=[key_out(r) for r in await self._store_call(self.store.list_keys())])

    async def create_key(self, context: CallerContext, request: KeyCreate) -> KeyCreated:
        self.require_admin(context)
        record, secret = await self._store_call(self.store.create_key(**request.model_dump()))
        return KeyCreated(**key_out(record).model_dump(), secret=secret)

    async def update_key(self, context: CallerContext, key_id: str, request: KeyUpdate) -> KeyOut:
        self.require_admin(context)
        changes = request.model_dump(exclude_unset=True)
        if changes.get("name", "") is None:
            raise bad_request("name cannot be cleared", param="name")
        return key_out(await self._store_call(self.store.update_key(key_id, **changes)))

    async def revoke_key(self, context: CallerContext, key_id: str, reason: str) -> KeyOut:
        self.require_admin(context)
        return key_out(await self._store_call(self.store.revoke_key(key_id, reason)))

    async def _store_call(self, awaitable):
        try:
            return await awaitable
        except UnknownKey:
            raise APIError(404, "No API key with that id.", type="not_found_error", param="key_id",
                           code="key_not_found") from None
        except ValueError as error:
            raise bad_request(str(error)) from None
        except StoreError:
            raise store_unavailable("keys cannot be read or changed") from None
