"""Usage and key management: `GET /v1/usage`, `/v1/admin/keys`."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query
from ray import serve

from serve.account_protocol import GroupBy, KeyCreate, KeyCreated, KeyList, KeyOut, KeyRevoke, KeyUpdate, UsageReport
from serve.account_service import AccountService
from serve.context import CallerContext
from serve.routers.common import caller

router = APIRouter()


async def accounts() -> AccountService:
    return serve.get_replica_context().servable_object.account_service


@router.get("/v1/usage", response_model=UsageReport)
async def usage(
    start: datetime | None = Query(None, description="from this time (ISO 8601), inclusive"),
    end: datetime | None = Query(None, description="until this time, exclusive"),
    group_by: GroupBy = Query("model"),
    key_id: str | None = Query(None, description="admin only: one key's usage"),
    context: CallerContext = Depends(caller),
    service: AccountService = Depends(accounts),
) -> UsageReport:
    return await service.usage(context, start, end, group_by, key_id)


@router.get("/v1/admin/keys", response_model=KeyList)
async def list_keys(context: CallerContext = Depends(caller), service: AccountService = Depends(accounts)) -> KeyList:
    return await service.list_keys(context)


@router.post("/v1/admin/keys", response_model=KeyCreated)
async def create_key(
    request: KeyCreate, context: CallerContext = Depends(caller), service: AccountService = Depends(accounts)
) -> KeyCreated:
    return await service.create_key(context, request)


@router.patch("/v1/admin/keys/{key_id}", response_model=KeyOut)
async def update_key(
    key_id: str,
    request: KeyUpdate,
    context: CallerContext = Depends(caller),
    service: AccountService = Depends(accounts),
) -> KeyOut:
    return await service.update_key(context, key_id, request)


@router.post("/v1/admin/keys/{key_id}/revoke", response_model=KeyOut)
async def revoke_key(
    key_id: str,
    request: KeyRevoke,
    context: CallerContext = Depends(caller),
    service: AccountService = Depends(accounts),
) -> KeyOut:
    return await service.revoke_key(context, key_id, request.reason)
