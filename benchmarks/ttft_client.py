"""The time-to-first-token benchmark's client: server-sent events split and timed (pure), one streamed
request, and a closed-loop phase of them at a given concurrency."""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import Iterable
from typing import Any

from benchmarks.ttft_figures import summarize
from benchmarks.ttft_plan import HTTP_TIMEOUT_S, LOCALHOST


class SSELines:
    """Splits a byte stream into SSE lines (`\\n`, `\\r\\n` or `\\r`), across arbitrary chunk edges."""

    def __init__(self) -> None:
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, data: bytes) -> list[str]:
        text = self._pending + self._decoder.decode(data)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop()
        return lines

    def close(self) -> list[str]:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [rest] if rest else []


def stream_timing(lines: Iterable[tuple[float, str]], sent_at: float, status: int = 200) -> dict[str, Any]:
    """The timing of one streamed chat completion from its SSE lines, each with its arrival time.

    Times are seconds after `sent_at`. `ttft_s`: the first `choices[].delta.content` that is not
    empty (the role chunk's empty content does not count); `last_token_s`: the last such delta;
    `done_s`: `data: [DONE]` (else the last line). Comments, blank lines and `event:`/`id:` fields
    are skipped; an `error` object in the stream is recorded in `errors`.
    """
    content_at: list[float] = []
    text: list[str] = []
    errors: list[str] = []
    first_event = role_at = finish_at = done_at = last_at = None
    finish_reason = None
    usage = None
    for at, raw in lines:
        line = raw.strip()
        last_at = at
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if first_event is None:
            first_event = at
        if payload == "[DONE]":
            done_at = at
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            errors.append(f"not JSON: {payload[:80]}")
            continue
        if not isinstance(chunk, dict):
            errors.append(f"not an object: {payload[:80]}")
            continue
        if "error" in chunk:
            error = chunk["error"]
            errors.append(str(error.get("message", error) if isinstance(error, dict) else error)[:200])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("role") and role_at is None:
                role_at = at
            content = delta.get("content")
            if content:
                content_at.append(at)
                text.append(content)
            if choice.get("finish_reason") and finish_at is None:
                finish_at = at
                finish_reason = choice["finish_reason"]
    if status != 200:
        errors.insert(0, f"HTTP {status}")
    if status == 200 and done_at is None:
        errors.append("no [DONE]")

    def after(at: float | None) -> float | None:
        return None if at is None else at - sent_at

    return {
        "status": status,
        "streamed": True,
        "ttft_s": after(content_at[0] if content_at else None),
        "last_token_s": after(content_at[-1] if content_at else None),
        "done_s": after(done_at if done_at is not None else last_at),
        "first_event_s": after(first_event),
        "role_s": after(role_at),
        "finish_s": after(finish_at),
        "content_chunks": len(content_at),
        "chars": sum(len(piece) for piece in text),
        "finish_reason": finish_reason,
        "completion_tokens": (usage or {}).get("completion_tokens"),
        "errors": errors,
    }


def body_timing(body: str, done_at: float, sent_at: float, status: int) -> dict[str, Any]:
    """The timing of a chat completion answered as one JSON body (the server ignored `stream`)."""
    errors = [] if status == 200 else [f"HTTP {status}: {body[:200]}"]
    content, finish_reason, tokens = "", None, None
    if status == 200:
        try:
            answer = json.loads(body)
            choice = answer["choices"][0]
            content = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
            tokens = (answer.get("usage") or {}).get("completion_tokens")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            errors.append(f"unreadable answer: {error}")
    at = done_at - sent_at
    return {
        "status": status,
        "streamed": False,
        "ttft_s": at if content else None,
        "last_token_s": at if content else None,
        "done_s": at,
        "first_event_s": at,
        "role_s": None,
        "finish_s": at,
        "content_chunks": 1 if content else 0,
        "chars": len(content),
        "finish_reason": finish_reason,
        "completion_tokens": tokens,
        "errors": errors,
    }


async def one_request(client: Any, url: str, body: bytes) -> dict[str, Any]:
    """One streamed chat completion; every SSE line timed as it arrives."""
    import httpx

    sent = time.perf_counter()
    lines: list[tuple[float, str]] = []
    status = -1
    try:
        async with client.stream("POST", url, content=body, headers={"content-type": "application/json"}) as response:
            status = response.status_code
            kind = response.headers.get("content-type", "")
            if status != 200 or not kind.startswith("text/event-stream"):
                text = (await response.aread()).decode("utf-8", "replace")
                return body_timing(text, time.perf_counter(), sent, status)
            splitter = SSELines()
            async for data in response.aiter_raw():
                at = time.perf_counter()
                lines += [(at, line) for line in splitter.feed(data)]
            lines += [(time.perf_counter(), line) for line in splitter.close()]
    except httpx.HTTPError as error:
        timing = stream_timing(lines, sent, status)
        timing["errors"].append(f"{type(error).__name__}: {error}"[:200])
        return timing
    return stream_timing(lines, sent, status)


async def run_phase(
    url: str, body: dict[str, Any], concurrency: int, warmup: int, measured: int, max_s: float
) -> dict[str, Any]:
    """`warmup + measured` requests, `concurrency` in flight (closed loop); the first `warmup` issued
    are not measured. Requests still running after `max_s` are cancelled and counted as failed."""
    import httpx

    if not url.startswith(LOCALHOST):
        raise ValueError(f"the benchmark only sends to {LOCALHOST}, not {url}")
    payload = json.dumps(body).encode()
    total = warmup + measured
    results: list[tuple[int, dict[str, Any]]] = []
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=HTTP_TIMEOUT_S, trust_env=False) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < total:
                number = issued
                issued += 1
                results.append((number, await one_request(client, url, payload)))

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=max_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    measured_timings = [timing for number, timing in sorted(results, key=lambda item: item[0]) if number >= warmup]
    answered = {number for number, _ in results}
    for number in range(warmup, issued):
        if number not in answered:  # cancelled when the phase ran out of time
            measured_timings.append({**stream_timing([], 0.0, -1), "errors": [f"cancelled after {max_s:g} s"]})
    summary = summarize(measured_timings)
    summary["concurrency"] = concurrency
    summary["warmup"] = warmup
    summary["wall_s"] = time.perf_counter() - started
    summary["timed_out"] = bool(pending)
    summary["requests_detail"] = [
        {k: t[k] for k in ("ttft_s", "last_token_s", "done_s", "content_chunks", "completion_tokens", "status")}
        for t in measured_timings
    ]
    return summary
