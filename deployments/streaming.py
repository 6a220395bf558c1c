"""Streaming a text answer token by token out of a batched `generate`.

A streaming request's item carries a `TokenSink`. When a group of items runs, `forward` passes one
`BatchStreamer` (transformers' streamer interface) to `generate`: at every decoding step it gets
one token per row, keeps each streaming row's tokens, decodes them on the model's thread with the
family's cleaning of text answers (`Streaming.answer_text`) and hands the text that extends what
the row already sent to that row's sink. The sink carries it to the replica's event loop, where
`VisionModel.stream` yields it. Rows without a sink (other requests of the batch) cost nothing,
and a group without a streaming row runs without a streamer.

Text is sent only as a prefix of the answer: a trailing incomplete character (U+FFFD, a token
that ends inside a UTF-8 sequence) and trailing whitespace (the answer is trimmed) wait for the next
token, as does a tail that the tokenizer's space clean-up could still rewrite. At the end of the
run every row's text is flushed in full. The final `Generation` stays the answer: the streamed
pieces are best effort, and the gateway sends whatever the final text adds to them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers.generation.streamers import BaseStreamer

logger = logging.getLogger("gigarouter.model")

REPLACEMENT = "\ufffd"
# What a tokenizer's `clean_up_tokenization` rewrites after a space (e.g. " 's" -> "'s"): a text
# ending in a space and the start of one of these may still lose that space.
CLEANUP_AFTER_SPACE = (".", "?", "!", ",", "' ", "n't", "'m", "'s", "'ve", "'re")


class TokenSink:
    """Where one streaming request's text goes: from the model's thread to the replica's event loop.

    Made on the event loop that serves the request; `send` may be called from any thread. Once the
    request has gone (`close`), what is sent is dropped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False

    def send(self, text: str) -> None:
        """Hand a piece of the answer to the request (thread-safe)."""
        if self.closed or not text:
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, text)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.closed = True

    def close(self) -> None:
        self.closed = True

    async def texts(self, done: asyncio.Future) -> AsyncIterator[str]:
        """The pieces as they arrive, until `done` (the request's result) has settled.

        The model's thread sends its pieces before its run ends, and the loop runs callbacks in
        the order they were scheduled, so every piece is queued before `done` settles."""
        while True:
            if not self._queue.empty():
                yield self._queue.get_nowait()
                continue
            if done.done():
                return
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()  # an unfinished get takes nothing from the queue
            if getter.done() and not getter.cancelled():
                yield getter.result()


@dataclass
class _Row:
    sink: TokenSink | None
    ids: list[int] = field(default_factory=list)
    sent: str = ""


def stable_text(text: str, cleanup_spaces: bool = False) -> str:
    """The part of a partial answer that the next tokens cannot change: without a trailing
    incomplete character, trailing whitespace, or (with `cleanup_spaces`) a tail that the
    tokenizer's space clean-up could still join to the word before it."""
    text = text.rstrip(REPLACEMENT).rstrip()
    if cleanup_spaces:
        space = text.rfind(" ")
        tail = text[space + 1 :]
        if space >= 0 and any(len(tail) < len(p) and p.startswith(tail) for p in CLEANUP_AFTER_SPACE):
            text = text[:space].rstrip()
    return text


class BatchStreamer(BaseStreamer):
    """The streamer of one `generate` over a group of items: splits each step's tokens by row and
    sends each streaming row's new text to its sink.

    `generate` calls `put` first with the rows' prompt (decoder-only) or decoder start tokens,
    shape (rows, length), then once per step with one token per row, shape (rows,) (rows already
    finished get the pad token), and `end` when it is done. `answer_text(row, ids)` is the row's
    answer from all its tokens so far, as the final answer is decoded and cleaned. `silent_ids`:
    tokens that cannot change that text (pad and other special tokens), so no decode is needed.
    A failure here never reaches `generate`: streaming stops and the final answers still come.
    """

    def __init__(
        self,
        sinks: Sequence[TokenSink | None],
        answer_text: Callable[[int, list[int]], str],
        silent_ids: frozenset[int] = frozenset(),
        cleanup_spaces: bool = False,
    ) -> None:
        self.rows = [_Row(sink) for sink in sinks]
        self.answer_text = answer_text
        self.silent_ids = silent_ids
        self.cleanup_spaces = cleanup_spaces
        self.broken = False

    def put(self, value: Any) -> None:
        if self.broken:
            return
        try:
            self._put(value.tolist() if hasattr(value, "tolist") else value)
        except Exception:
            logger.exception("token streaming failed; the answers come whole at the end")
            self.broken = True

    def end(self) -> None:
        if self.broken:
            return
        try:
            for index, row in enumerate(self.rows):
                if self._streaming(row):
                    self._send(index, row, final=True)
        except Exception:
            logger.exception("token streaming failed at the end; the answers come whole")
            self.broken = True

    def _put(self, tokens: list[Any]) -> None:
        if len(tokens) != len(self.rows):
            raise ValueError(f"generate gave {len(tokens)} rows for {len(self.rows)} items (beam search?)")
        for index, (row, step) in enumerate(zip(self.rows, tokens)):
            if not self._streaming(row):
                continue
            new = step if isinstance(step, list) else [step]  # a prompt row, or one token
            row.ids.extend(new)
            if any(token not in self.silent_ids for token in new):
                self._send(index, row, final=False)

    @staticmethod
    def _streaming(row: _Row) -> bool:
        return row.sink is not None and not row.sink.closed

    def _send(self, index: int, row: _Row, final: bool) -> None:
        text = self.answer_text(index, row.ids)
        if not final:
            text = stable_text(text, self.cleanup_spaces)
        # Only what extends the text already sent: a piece once sent cannot be taken back.
        if len(text) > len(row.sent) and text.startswith(row.sent):
            row.sink.send(text[len(row.sent) :])
            row.sent = text


class Streaming:
    """Mixed into `VisionModel`: which items stream token by token and how their text is decoded.

    A family that streams gives its items a `sink: TokenSink | None = None` field, says in
    `streams(item)` which items can (greedy search, a plain-text answer), passes
    `streamer=self.streamer(items)` to `generate`, and overrides `answer_text` when its text answers
    are cleaned beyond decoding. Decoding uses `stream_tokenizer`, a copy of the processor's
    tokenizer made at load and used by the model's thread alone (a fast tokenizer used by two
    threads at once fails: "Already borrowed").
    """

    stream_tokenizer: Any = None

    def streams(self, item: Any) -> bool:
        """Whether this item's answer can go out token by token (default: no, it comes at the end)."""
        return False

    def answer_text(self, item: Any, ids: list[int]) -> str:
        """A text answer from all its tokens so far (prompt or start tokens included), exactly as the
        family's `finish` makes the final text of the whole sequence (default: decoded without
        special tokens, trimmed)."""
        return self.stream_tokenizer.decode(ids, skip_special_tokens=True).strip()

    def streamer(self, items: list[Any]) -> BatchStreamer | None:
        """The streamer for one group's `generate`; None when no item of the group streams."""
        sinks = [getattr(item, "sink", None) for item in items]
        if self.stream_tokenizer is None or not any(s is not None and not s.closed for s in sinks):
            return None
        tokenizer = self.stream_tokenizer
        return BatchStreamer(
            sinks,
            lambda row, ids: self.answer_text(items[row], ids),
            silent_ids=frozenset(tokenizer.all_special_ids),
            cleanup_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
        )
