"""The real `fal_client`, configured by environment variables only (FAL_RUN_HOST, FAL_KEY,
SSL_CERT_FILE), with every socket it opens watched: for tests/test_fal.py, in a process of its own
(fal_client reads FAL_RUN_HOST once, when it is imported).

    python -m tests.fal_client_calls < plan.json

The plan is a list of calls: `{"app": "fal-ai/florence-2-large/object-detection", "arguments": {...}}`,
optionally `"call"`: `run_async`, or one of the queue's (`subscribe`, `subscribe_async`, `submit_async`,
`submit_status_result`, `submit` with `webhook_url`, `status` / `result` / `cancel` / `wait_status` (with `until`) with `request_id`, which may be `$N`:
the request id call N answered), `"key": "..."` (a client with that key instead of FAL_KEY's), and
`"encode_png": "<base64 PNG>"` (the image URL is then made by `fal_client.encode`, locally).

An audit hook sees each name lookup and connection of this process (`socket.getaddrinfo`,
`socket.connect`, the real sockets: nothing is mocked): one that is not a loopback address is refused
(the hook raises before anything leaves the machine) and reported. fal_client's upload functions
are wrapped to count calls. Prints one line `RESULT <json>`: per call its result or the
FalClientHTTPError (status, message, error_type, body, headers), then the lookups, connections,
refusals and uploads seen.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import sys
import time
from typing import Any

SEEN: dict[str, list[Any]] = {"lookups": [], "connections": [], "refused": [], "uploads": []}


def loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def audit(event: str, args: tuple) -> None:
    if event == "socket.getaddrinfo":
        host = args[0]
        SEEN["lookups"].append(str(host))
    elif event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):
            return  # a Unix socket path: local by definition
        host = address[0]
        SEEN["connections"].append(f"{host}:{address[1]}")
    else:
        return
    if not loopback(host):
        SEEN["refused"].append(str(host))
        raise ConnectionRefusedError(f"test: {event} to {host} refused (loopback only)")


sys.addaudithook(audit)  # before fal_client and httpx are imported

import fal_client  # noqa: E402
import fal_client.client as fal_module  # noqa: E402


def watch(owner: Any, name: str) -> None:
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        SEEN["uploads"].append(name)
        return original(*args, **kwargs)

    setattr(owner, name, counted)


for _name in ("upload", "upload_file", "upload_image", "upload_async", "upload_file_async", "upload_image_async"):
    watch(fal_client, _name)
for _cls in (fal_module.SyncClient, fal_module.AsyncClient):
    for _name in ("upload", "upload_file", "upload_image"):
        watch(_cls, _name)
for _name in ("_upload_v3", "_async_upload_v3", "_upload_via_storage", "_async_upload_via_storage"):
    watch(fal_module, _name)
for _cls in (fal_module.CDNTokenManager, fal_module.AsyncCDNTokenManager):
    watch(_cls, "get_token")


def status_json(status: Any) -> dict[str, Any]:
    """A fal_client status object (Queued / InProgress / Completed) as JSON."""
    kind = type(status).__name__
    if kind == "Queued":
        return {"status": kind, "position": status.position}
    logs = [log["message"] for log in status.logs] if status.logs is not None else None
    if kind == "InProgress":
        return {"status": kind, "logs": logs}
    return {"status": kind, "logs": logs, "metrics": status.metrics,
            "error": getattr(status, "error", None), "error_type": getattr(status, "error_type", None)}  # fmt: skip


def queue_call(item: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The queue's calls: subscribe[_async], submit -> status -> result, submit only, status, result, cancel."""
    kind, app = item["call"], item.get("app", "")
    client = fal_client.SyncClient(key=item["key"]) if "key" in item else fal_client
    updates: list[dict[str, Any]] = []
    if kind == "subscribe":
        result = client.subscribe(app, arguments=arguments, with_logs=True, interval=0.05,
                                  on_queue_update=lambda s: updates.append(status_json(s)))  # fmt: skip
        return {"ok": result, "updates": updates}
    if kind == "subscribe_async":

        async def subscribe() -> Any:
            # a client per event loop: the module's default async client is bound to the first one
            return await fal_client.AsyncClient().subscribe(
                app, arguments=arguments, with_logs=True, interval=0.05,
                on_queue_update=lambda s: updates.append(status_json(s)),
            )  # fmt: skip

        return {"ok": asyncio.run(subscribe()), "updates": updates}
    if kind == "submit_async":

        async def submit_and_get() -> tuple[str, Any]:
            handle = await fal_client.AsyncClient().submit(app, arguments=arguments)
            return handle.request_id, await handle.get()

        request_id, result = asyncio.run(submit_and_get())
        return {"ok": result, "request_id": request_id}
    if kind == "submit_status_result":
        handle = client.submit(app, arguments=arguments)
        statuses = [status_json(handle.status(with_logs=True))]
        while statuses[-1]["status"] != "Completed":
            time.sleep(0.05)
            statuses.append(status_json(handle.status(with_logs=True)))
        # fal_client.result builds the URL from the app id and request id alone, as fal documents
        return {"ok": client.result(app, handle.request_id), "request_id": handle.request_id, "statuses": statuses,
                "urls": [handle.status_url, handle.response_url, handle.cancel_url]}  # fmt: skip
    if kind == "submit":
        handle = client.submit(app, arguments=arguments, webhook_url=item.get("webhook_url"))
        return {"ok": handle.request_id}
    if kind == "wait_status":  # poll until the status is `until` (e.g. InProgress), at most 60 s
        deadline, seen = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            seen.append(status_json(client.status(app, item["request_id"], with_logs=True)))
            if seen[-1]["status"] == item["until"]:
                break
            time.sleep(0.02)
        return {"ok": seen[-1], "seen": len(seen)}
    if kind == "status":
        return {"ok": status_json(client.status(app, item["request_id"], with_logs=True))}
    if kind == "result":
        return {"ok": client.result(app, item["request_id"])}
    if kind == "cancel":
        client.cancel(app, item["request_id"])
        return {"ok": "cancelled"}
    raise ValueError(f"unknown call {kind!r}")


def call(item: dict[str, Any]) -> dict[str, Any]:
    arguments = dict(item.get("arguments") or {})
    if "encode_png" in item:
        arguments["image_url"] = fal_client.encode(base64.b64decode(item["encode_png"]), "image/png")
    try:
        if item.get("call") not in (None, "run", "run_async"):
            return queue_call(item, arguments)
        if item.get("call") == "run_async":
            run_async = fal_client.AsyncClient(key=item["key"]).run if "key" in item else fal_client.run_async
            result = asyncio.run(run_async(item["app"], arguments=arguments))
        else:
            run = fal_client.SyncClient(key=item["key"]).run if "key" in item else fal_client.run
            result = run(item["app"], arguments=arguments)
        return {"ok": result}
    except fal_client.FalClientHTTPError as error:
        try:
            body = error.response.json()
        except ValueError:
            body = error.response.text
        return {
            "error": {
                "status": error.status_code,
                "message": error.message,
                "error_type": error.error_type,
                "body": body,
                "headers": {k.lower(): v for k, v in error.response_headers.items()},
            }
        }


def main() -> int:
    plan = json.load(sys.stdin)
    run_url = fal_module.RUN_URL_FORMAT
    assert run_url == f"https://{os.environ['FAL_RUN_HOST']}/", run_url
    if "FAL_QUEUE_RUN_HOST" in os.environ:
        assert fal_module.QUEUE_URL_FORMAT == f"https://{os.environ['FAL_QUEUE_RUN_HOST']}/"
    results: list[dict[str, Any]] = []
    for item in plan:
        if str(item.get("request_id", "")).startswith("$"):  # "$3": the request id call 3 answered
            item = {**item, "request_id": results[int(item["request_id"][1:])]["ok"]}
        results.append(call(item))
    print("RESULT " + json.dumps({"run_url": run_url, "calls": results, **SEEN}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
