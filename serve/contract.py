"""The typed contract between the gateway and the model replicas: what crosses Ray, both ways.

Torch-free and pickled by Ray. The gateway (and any Serve app holding a handle) sends one
`ModelCall` to a model deployment's `run` method and gets one `ModelResult` back. Images travel
as `EncodedImage`: the bytes the client sent, already checked (format, byte size, pixel size from
the header) with the size they display at, so the replica decodes only what its processor needs
and results can still be given in the pixels of the original image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EncodedImage:
    """An image as its encoded bytes, probed (not decoded) by the sender.

    `width` and `height` are the size it displays at (EXIF orientation applied): the pixel space
    of regions in requests and of boxes in results.
    """

    data: bytes = field(repr=False)
    format: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class Region:
    """A rectangle in pixels of the image it belongs to."""

    x1: float
    y1: float
    x2: float
    y2: float

    def as_dict(self) -> dict[str, float]:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}


@dataclass
class Usage:
    """What one call used: requests, images and tokens (prompt tokens include text inputs of encoders)."""

    requests: int = 1
    images: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.images + other.images,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


# ----- calls: one dataclass per kind of work; field names are the Python handle API's -----


@dataclass(frozen=True, kw_only=True)
class GenerateCall:
    """Run one task on one image. `param_names` maps `text`/`region`/`max_new_tokens` to the
    caller's field names, so that a 400 names the field the caller sent (HTTP: `text_input`)."""

    image: EncodedImage
    task: str
    text: str | None = None
    region: Region | None = None
    max_new_tokens: int | None = None
    num_beams: int | None = None
    param_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class EmbedImagesCall:
    images: tuple[EncodedImage, ...]
    max_num_patches: int | None = None


@dataclass(frozen=True, kw_only=True)
class EmbedTextsCall:
    """`params` names each text in errors (e.g. `input[3]`); default `texts[i]`."""

    texts: tuple[str, ...]
    params: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class ClassifyCall:
    image: EncodedImage
    labels: tuple[str, ...]
    template: str | None = None
    max_num_patches: int | None = None


@dataclass(frozen=True, kw_only=True)
class ScoreCall:
    images: tuple[EncodedImage, ...]
    texts: tuple[str, ...]
    max_num_patches: int | None = None


ModelCall = GenerateCall | EmbedImagesCall | EmbedTextsCall | ClassifyCall | ScoreCall


# ----- results -----


@dataclass(kw_only=True)
class ModelResult:
    """Common to every result. `replica_ready_at` is the wall-clock time at which the replica that
    ran the call finished loading: a call that arrived before it waited through a start."""

    usage: Usage = field(default_factory=Usage)
    replica_ready_at: float = 0.0


@dataclass(kw_only=True)
class Generation(ModelResult):
    """A task's answer: `results` in the family's result shape (fal's for Florence-2), `text` its
    text form (the chat answer)."""

    task: str
    text: str
    results: Any
    finish_reason: str = "stop"


@dataclass(kw_only=True)
class Embeddings(ModelResult):
    """L2-normalised vectors, one row per input (a float32 numpy array)."""

    vectors: Any


@dataclass(kw_only=True)
class Classification(ModelResult):
    """(label, probability) pairs, most probable first."""

    labels: list[tuple[str, float]]


@dataclass(kw_only=True)
class Scores(ModelResult):
    """Match probabilities: one row per image, one column per text."""

    scores: list[list[float]]


@dataclass
class GenerationDelta:
    """A piece of a streamed answer's text (a replica's `stream` method yields these in order, as
    the tokens are made, then one `Generation`: the whole answer with its usage). The pieces joined
    are the final `Generation.text`, except trailing whitespace the final answer trims.
    `replica_ready_at` as in `ModelResult`: a stream's first piece tells whether it waited for a start."""

    text: str
    replica_ready_at: float = 0.0


def was_cold(arrived_at: float, result: ModelResult | GenerationDelta) -> bool:
    """Whether a call waited through its replica's start: the replica became ready after the call
    arrived (wall-clock times; a result without a ready time never counts as cold)."""
    return result.replica_ready_at > arrived_at
