"""Text limits: every text is checked against the model's positions before it is queued."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

from serve.errors import APIError, bad_request


def context_exceeded(message: str, param: str) -> APIError:
    """A 400 for text beyond a model's limits, with OpenAI's code for it."""
    return bad_request(message, param=param, code="context_length_exceeded")


class TextLimits:
    """Mixed into `VisionModel`: token counting on a private copy of the processor, and the
    context check that names the caller's field."""

    _counter: Any = None
    _count_lock = threading.Lock()

    @property
    def text_positions(self) -> int:
        """Position embeddings of the model's text part: the most tokens it can hold in one sequence."""
        return int(self.model.config.text_config.max_position_embeddings)

    @contextmanager
    def counting(self) -> Iterator[Any]:
        """The processor that request checks tokenize with.

        A fast tokenizer keeps its padding and truncation settings in state that every call sets
        anew, so a check counting tokens (no padding) beside a batch being tokenized (padded) could
        strip the batch's padding mid-call. Checks run in threads beside the model's run, so they get
        their own copy of the processor, used by one check at a time. During `setup` nothing runs
        beside it and the processor itself is used.
        """
        counter = self._counter
        if counter is None:
            yield self.processor
            return
        with self._count_lock:
            yield counter

    def text_tokens(self, text: str, **kwargs: Any) -> int:
        """Tokens the processor makes of a prompt without an image (special tokens included)."""
        with self.counting() as processor:
            return len(processor(text=[text], **kwargs)["input_ids"][0])

    def measure_image_tokens(self, sample: str, **kwargs: Any) -> int:
        """Tokens the processor adds to a prompt when an image comes with it (image tokens and their
        markers), measured once at load with a small probe image, so real processors need no constants."""
        probe = Image.new("RGB", (32, 32))
        with_image = len(self.processor(text=[sample], images=[probe], **kwargs)["input_ids"][0])
        return with_image - self.text_tokens(sample, **kwargs)

    def check_context(
        self, prompt_tokens: int, text: str | None, max_new_tokens: int, names: dict[str, str] | None, shared: bool
    ) -> None:
        """A 400 (`context_length_exceeded`) when a prompt, image tokens included, and the tokens to
        generate do not fit the text model's positions.

        `shared`: prompt and answer are one sequence (decoder-only), so together they must fit;
        otherwise (encoder-decoder) each must fit on its own. `names` maps the arguments `text` and
        `max_new_tokens` to the request's field names (the ingress passes its HTTP names; Python
        callers get the argument names). The text is named unless the answer alone cannot fit.
        """
        limit = self.text_positions
        used = prompt_tokens + max_new_tokens if shared else prompt_tokens
        if used <= limit and max_new_tokens <= limit:
            return
        text_param = (names or {}).get("text", "text")
        tokens_param = (names or {}).get("max_new_tokens", "max_new_tokens")
        # Only to decide which field to name: the prompt less the text is what no text can shorten.
        with self.counting() as processor:
            text_alone = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        fixed = prompt_tokens - text_alone
        answer_room = limit - fixed if shared else limit
        if max_new_tokens > answer_room:
            prompt_part = f" and the prompt without text takes {fixed}" if shared else ""
            raise context_exceeded(
                f"{tokens_param} is {max_new_tokens}, but {self.spec.id} can generate at most {answer_room} tokens"
                f" here: its context is {limit} tokens{prompt_part}",
                tokens_param,
            )
        detail = f" and {max_new_tokens} more may be generated, {used} in all" if shared else ""
        raise context_exceeded(
            f"{text_param} is too long: the prompt comes to {prompt_tokens} tokens ({fixed} of them image, task and"
            f" special tokens){detail}, but {self.spec.id} has a context of {limit} tokens; shorten the text by at"
            f" least {used - limit} tokens",
            text_param,
        )
