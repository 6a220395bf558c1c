"""Who is asking, and by when: the context every service function takes beside its typed request."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class CallerContext:
    """`key_id`: the API key's id (None when auth is off); `caller`: that key's permissions
    (`serve.accounts.Caller`: allowed models, budget, admin), None when auth is off; `deadline`: a `time.monotonic()` time
    after which no wait may go on (None: the gateway's timeouts alone); `arrived_at`: wall-clock
    time the request arrived (a replica that became ready after it means the call waited for a start)."""

    request_id: str = field(default_factory=new_request_id)
    key_id: str | None = None
    caller: Any = None
    deadline: float | None = None
    arrived_at: float = field(default_factory=time.time)
