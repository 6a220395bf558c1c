"""A chat answer streamed as OpenAI `chat.completion.chunk` server-sent events.

`ChatStream` is what the service layer hands the router for `stream: true`; `chat_stream` renders
it as events, with a failure mid-stream as one event in the error envelope before `[DONE]`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serve.errors import APIError, error_body
from serve.protocol import ChatCompletion, completion_id

logger = logging.getLogger("gigarouter.protocol")


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event carrying JSON (or the literal [DONE])."""
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {body}\n\n"



@dataclass
class ChatStream:
    """A chat answer as the model makes it: `pieces` yields its text in pieces (`str`), then the
    whole `ChatCompletion`, whose text the pieces begin (what they lack comes with the end: all of
    it for a structured answer). A failure after the first piece is raised as an `APIError`."""

    model: str
    pieces: AsyncIterator[str | ChatCompletion]
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))


async def chat_stream(stream: ChatStream, include_usage: bool) -> AsyncIterator[str]:
    """The answer as OpenAI chat.completion.chunk events: the role, one chunk per piece of text,
    the finish reason with the `vision` result, the usage if asked for, then [DONE]. A failure
    mid-stream is one event in the error envelope (`{"error": {...}}`) before [DONE]."""
    base = {"id": stream.id, "object": "chat.completion.chunk", "created": stream.created, "model": stream.model}

    def chunk(delta: dict[str, Any]) -> str:
        return sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    try:
        async for piece in stream.pieces:
            if isinstance(piece, str):
                sent += piece
                yield chunk({"content": piece})
                continue
            choice = piece.choices[0]
            text = choice.message.content
            if not text.startswith(sent):  # pieces are best effort; the final chunk's `vision` is the answer
                logger.warning("%s: the streamed text is not the start of the final answer", stream.model)
            elif len(text) > len(sent):  # the rest, or all of a structured answer
                for rest in text_pieces(text[len(sent) :]):
                    yield chunk({"content": rest})
            final = {"index": 0, "delta": {}, "finish_reason": choice.finish_reason}
            yield sse({**base, "choices": [final], "vision": piece.vision.model_dump()})
            if include_usage:
                yield sse({**base, "choices": [], "usage": piece.usage.model_dump()})
            break
        else:
            raise RuntimeError("the stream ended before the whole answer")
    except APIError as error:
        yield sse(error.body())
    except Exception:
        logger.exception("%s: a streamed answer failed", stream.model)
        yield sse(error_body(f"The model '{stream.model}' failed to finish the answer.", "server_error"))
    yield sse("[DONE]")


def text_pieces(text: str, size: int = 16) -> list[str]:
    words = text.split(" ")
    pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [p if i == 0 else " " + p for i, p in enumerate(pieces)] or [""]
