"""The one error path: every failure a client sees is an OpenAI error envelope."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error with an HTTP status that is safe to show to the client as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def __reduce__(self):
        # Keep every field when the error crosses a Ray process boundary.
        return (
            _rebuild,
            (self.status, self.message, self.type, self.param, self.code, self.headers),
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def _rebuild(status, message, type, param, code, headers) -> APIError:
    return APIError(status, message, type=type, param=param, code=code, headers=headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> APIError:
    return APIError(413, message, param=param, code="too_large")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist. GET /v1/models lists the served models.",
        param="model",
        code="model_not_found",
    )


def find_api_error(error: BaseException) -> APIError | None:
    """The APIError a model replica raised, if that is what crossed the process boundary."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, APIError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return None


def model_unavailable(model: str, reason: str | None = None, retry_after_s: int = 10) -> APIError:
    """503: the model cannot serve now (its deployment failed, or its replica died)."""
    why = f": {reason.rstrip('.')}" if reason else ""
    return APIError(
        503,
        f"The model '{model}' is unavailable{why}. Try again later.",
        type="unavailable_error",
        code="model_unavailable",
        headers={"Retry-After": str(retry_after_s)},
    )


def short_reason(message: str | None, limit: int = 300) -> str | None:
    """The gist of a Serve status message, safe to show a client: its first sentence and, when a
    traceback follows, the exception on its last line; no stack frames, pids or actor ids."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return None
    gist = lines[0].split(". ")[0].rstrip(".")
    if len(lines) > 1:
        gist = f"{gist}: {lines[-1]}"
    return gist if len(gist) <= limit else gist[: limit - 3] + "..."
