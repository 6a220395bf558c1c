"""The published API description (/openapi.json) says what the gateway answers and what it accepts.

Built in-process from the FastAPI app and `document_error_envelope`, no Ray: every operation
documents the statuses it can answer with the error envelope, the caps come from the gateway's
configuration, and the request constraints agree with the server's own checks (bodies generated
from the schema pass them; image URLs outside the documented forms are refused by the image loader).
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any

import pytest
import schemathesis
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck, given, settings
from PIL import Image

from serve.auth import OPEN_PATHS
from serve.config import GatewayConfig
from serve.errors import APIError
from serve.images import ImageLimits, load_image, parse_data_url
from serve.ingress import app
from serve.protocol import (
    DATA_IMAGE_URL_PATTERN,
    IMAGE_URL_PATTERN,
    ChatCompletionRequest,
    ClassificationRequest,
    EmbeddingRequest,
    ScoreRequest,
    VisionTaskRequest,
)
from serve.validation import document_error_envelope

ERROR_REF = "#/components/schemas/ErrorResponse"
MODEL_ROUTES = [
    ("post", "/v1/chat/completions"),
    ("post", "/v1/embeddings"),
    ("post", "/v1/classifications"),
    ("post", "/v1/scores"),
    ("post", "/v1/vision/{model_name}/{task_name}"),
]
# The error statuses each operation can answer with the default configuration (auth and rate limit off).
DEFAULT_ERRORS = {
    ("get", "/health"): set(),
    ("get", "/health/ready"): {500, 503},
    ("get", "/v1/models"): {500},
    ("get", "/v1/models/{model_id}"): {404, 500},
    ("post", "/v1/models/{model_id}/interest"): {404, 500},
    **{route: {400, 404, 413, 500, 503, 504} for route in MODEL_ROUTES},
}
# Caps unlike the defaults, so a schema that shows them shows this configuration.
CAPPED = GatewayConfig(max_labels=7, max_images_per_request=3, max_inputs_per_request=5)
LOCKED = GatewayConfig(
    auth={"enabled": True}, rate_limit={"enabled": True}, images={"allow_http": False}, max_body_bytes=65536
)


def build(config: GatewayConfig | None = None) -> dict[str, Any]:
    """The schema a gateway with `config` publishes (what `_openapi()` builds inside its replica)."""
    raw = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    return document_error_envelope(raw, config)


def operations(spec: dict[str, Any]):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def errors_of(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if not code.startswith("2")}


def prop(spec: dict[str, Any], model: str, name: str) -> dict[str, Any]:
    return spec["components"]["schemas"][model]["properties"][name]


def png_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ----- statuses -----


def test_each_operation_documents_exactly_the_statuses_it_can_answer():
    spec = build()
    found = {(method, path): errors_of(op) for method, path, op in operations(spec)}
    for route, expected in DEFAULT_ERRORS.items():
        if route[1] in spec["paths"]:  # /health/ready: only where the route exists
            assert found[route] == expected, route
    for route in MODEL_ROUTES:
        assert route in found, route
    # GET routes that never call a model claim no 503/504 from one; nothing claims FastAPI's 422.
    assert not {503, 504} & found[("get", "/v1/models")]
    assert not any(422 in statuses for statuses in found.values())


def test_error_statuses_carry_the_envelope_and_their_headers():
    spec = build(LOCKED)
    envelope = spec["components"]["schemas"]["ErrorResponse"]
    assert set(envelope["properties"]["error"]["required"]) == {"message", "type", "param", "code"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for method, path, operation in operations(spec):
        for code, response in operation["responses"].items():
            if code.startswith("2"):
                continue
            schema = response["content"]["application/json"]["schema"]["$ref"]
            if (path, code) == ("/health/ready", "503"):
                continue  # the route documents its own body: what it waits for
            assert schema == ERROR_REF, (method, path, code)
            assert response["description"], (method, path, code)
            headers = response.get("headers", {})
            if code in ("429", "503", "504"):
                assert headers["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}, (method, path, code)
            if code == "401":
                assert "WWW-Authenticate" in headers
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "65536 bytes" in chat["413"]["description"], "the body cap of this configuration"
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "x-cold-start" in chat["200"]["headers"]


def test_auth_and_rate_limit_statuses_follow_the_configuration():
    closed = {(m, p): (errors_of(op), op.get("security")) for m, p, op in operations(build(LOCKED))}
    opened = {(m, p): errors_of(op) for m, p, op in operations(build())}
    for (method, path), (statuses, security) in closed.items():
        if path in OPEN_PATHS:
            assert not {401, 429} & statuses and security == [], path
        else:
            assert {401, 429} <= statuses and security == [{"apiKey": []}], path
        assert not {401, 429} & opened[(method, path)], path
    assert build(LOCKED)["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
    assert "securitySchemes" not in build()["components"]


def test_the_ingress_hook_publishes_the_default_configuration_outside_serve():
    spec = app.openapi()
    defaults = GatewayConfig()
    assert prop(spec, "ClassificationRequest", "labels")["maxItems"] == defaults.max_labels
    assert {(m, p): errors_of(op) for m, p, op in operations(spec)} == {
        (m, p): errors_of(op) for m, p, op in operations(build())
    }


# ----- request constraints -----


def test_list_caps_come_from_the_configuration():
    spec = build(CAPPED)
    labels = prop(spec, "ClassificationRequest", "labels")
    assert (labels["minItems"], labels["maxItems"]) == (1, 7)
    assert labels["items"]["pattern"] == r"\S"
    assert prop(spec, "ScoreRequest", "texts")["maxItems"] == 7
    images = prop(spec, "ScoreRequest", "images")
    assert (images["minItems"], images["maxItems"]) == (1, 3)
    text, array = prop(spec, "EmbeddingRequest", "input")["anyOf"]
    assert text["minLength"] == 1
    assert (array["minItems"], array["maxItems"], array["items"]["minLength"]) == (1, 5, 1)
    assert "x-limit" not in str(spec), "every configured cap is resolved"


def test_image_url_forms_and_other_constraints_are_in_the_schema():
    spec = build()
    image_fields = [
        prop(spec, "ClassificationRequest", "image"),
        prop(spec, "ScoreRequest", "images")["items"],
        prop(spec, "VisionTaskRequest", "image_url"),
        prop(spec, "ImageURL", "url"),
    ]
    assert all(field["pattern"] == IMAGE_URL_PATTERN for field in image_fields)
    data_only = build(LOCKED)
    assert prop(data_only, "ClassificationRequest", "image")["pattern"] == DATA_IMAGE_URL_PATTERN
    assert prop(data_only, "ScoreRequest", "images")["items"]["pattern"] == DATA_IMAGE_URL_PATTERN
    template = prop(spec, "ClassificationRequest", "prompt_template")["anyOf"]
    assert {"type": "string", "pattern": r"\{label\}"} in template
    assert prop(spec, "EmbeddingRequest", "dimensions")["type"] == "null", "any value is refused"


@pytest.mark.parametrize(
    "url",
    [
        "DATA:IMAGE/PNG;BASE64,{png}",
        "data: image/png ; base64 ,{png}",
        "data:image/png;base64,{png}",
    ],
)
def test_urls_in_the_documented_data_form_load(url):
    url = url.format(png=png_url().split(",", 1)[1])
    assert re.search(DATA_IMAGE_URL_PATTERN, url) and re.search(IMAGE_URL_PATTERN, url)
    image = asyncio.run(load_image(url, ImageLimits(allow_http=False), "image"))
    assert image.size == (8, 6)


@pytest.mark.parametrize(
    "url",
    [
        " data:image/png;base64,{png}",
        "data:text/plain;base64,{png}",
        "data:image/png,{png}",
        "data:image/png;charset=utf-8;base64,{png}",
        "data:;base64,{png}",
        "ftp://127.0.0.1/x.png",
        "file:///etc/passwd",
        "http:127.0.0.1/x.png",
        "https:/127.0.0.1/x.png",
        "127.0.0.1/x.png",
    ],
)
def test_urls_outside_the_documented_forms_are_refused(url):
    url = url.format(png=png_url().split(",", 1)[1])
    assert not re.search(IMAGE_URL_PATTERN, url)
    # allow_http on: a malformed http(s) URL is refused while it is parsed, before any resolution.
    with pytest.raises(APIError) as error:
        asyncio.run(load_image(url, ImageLimits(), "image"))
    assert (error.value.status, error.value.code) == (400, "invalid_image_url"), error.value.message


def test_http_urls_match_only_where_the_gateway_fetches():
    url = "HTTPS://127.0.0.1/x.png"
    assert re.search(IMAGE_URL_PATTERN, url) and not re.search(DATA_IMAGE_URL_PATTERN, url)
    with pytest.raises(APIError) as error:  # a gateway that does not fetch says so (and the schema says data: only)
        asyncio.run(load_image(url, ImageLimits(allow_http=False), "image"))
    assert error.value.code == "image_url_forbidden"


def test_request_models_accept_what_they_accepted_before():
    # The constraints are schema-only where the route or image loader enforces them with its own message.
    assert ClassificationRequest(model="m", image="x", labels=["a"] * 300).image == "x"
    assert ScoreRequest(model="m", images=["x"] * 20, texts=["a"]).images == ["x"] * 20
    assert EmbeddingRequest(model="m", input=[""], dimensions=3).dimensions == 3
    assert VisionTaskRequest(image_url="not a url").image_url == "not a url"


# ----- bodies generated from the schema pass the server's checks -----

CONFIG = GatewayConfig(max_labels=6, max_images_per_request=3, max_inputs_per_request=4, images={"allow_http": False})
GENERATED = {
    "/v1/classifications": ClassificationRequest,
    "/v1/scores": ScoreRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/vision/{model_name}/{task_name}": VisionTaskRequest,
}


def server_checks(path: str, request: Any) -> None:
    """The checks the route makes before a model is called (serve/ingress.py) that a schema can state."""
    if path == "/v1/classifications":
        assert len(request.labels) <= CONFIG.max_labels
        urls = [request.image]
    elif path == "/v1/scores":
        assert len(request.images) <= CONFIG.max_images_per_request and len(request.texts) <= CONFIG.max_labels
        urls = request.images
    elif path == "/v1/embeddings":
        assert len(request.inputs) <= CONFIG.max_inputs_per_request and request.dimensions is None
        assert all(request.inputs) or request.resolved_modality == "image"
        urls = []
    else:
        urls = [request.image_url] if path.startswith("/v1/vision") else []
    for url in urls:
        # The URL has the form the gateway loads: at worst its (random) base64 data is not an image.
        try:
            parse_data_url(url, CONFIG.images, "image")
        except APIError as error:
            assert error.code == "invalid_image", (url, error.message)


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_bodies_generated_from_the_schema_pass_validation_and_the_routes_caps(path):
    operation = schemathesis.openapi.from_dict(build(CONFIG))[path]["POST"]
    model = GENERATED[path]
    seen = []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case) -> None:
        request = model.model_validate(case.body)
        server_checks(path, request)
        seen.append(request)

    run()
    assert len(seen) >= 10
