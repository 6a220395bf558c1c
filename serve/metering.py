"""Metering a service call: admission (the key may use the model, its budget is not spent) and one
usage row per call, whatever its outcome. Used by `serve.service` around every model call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from serve.accounts import Accounts
from serve.config import ModelSpec
from serve.context import CallerContext
from serve.contract import Usage
from serve.errors import APIError
from serve.store import UsageRow, cost_usd


@dataclass
class Meter:
    """What a metered call reports before it ends: the usage of its result."""

    usage: Usage | None = None


@asynccontextmanager
async def metered(
    accounts: Accounts | None, context: CallerContext, spec: ModelSpec, endpoint: str, task: str | None, images: int
) -> AsyncIterator[Meter]:
    """Admit the call (403/429/503 refusals are recorded too), then record its usage row when it
    ends: status 200 with the result's usage and cost, or the error's status with no cost (a charge
    taken at admission is refunded by the row)."""
    meter, started, status, charged = Meter(), time.perf_counter(), 500, 0.0
    try:
        if accounts is not None:
            charged = await accounts.admit(context.caller, spec.id, images, spec.price_per_1k_images)
        yield meter
        status = 200
    except APIError as error:
        status = error.status
        raise
    finally:
        if accounts is not None:
            usage = meter.usage if status == 200 else None
            cost, priced = cost_usd(usage.images if usage else 0, spec.price_per_1k_images)
            accounts.record(
                UsageRow(
                    request_id=context.request_id,
                    model=spec.id,
                    endpoint=endpoint,
                    task=task,
                    status=status,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    key_id=context.key_id,
                    images=usage.images if usage else 0,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    cost_usd=cost,
                    priced=priced,
                    charged_usd=charged,
                )
            )
