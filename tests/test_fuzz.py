"""Schemathesis fuzzing of a running gateway's own /openapi.json: whatever a client sends, no 5xx,
and every answer is one the schema documents (status, content type, headers, body).

The target is the `faults` app (tests/hardening_apps.py), whose `images.allow_http` is false: any
http(s) image URL the fuzzer invents is refused before it is resolved, so the gateway never
contacts any host on the fuzzer's behalf, and all traffic stays on 127.0.0.1. (The main session
gateway keeps URL fetching on, and its default policy allows public hosts: it must not be fuzzed.)

Two passes, 25 examples per operation each, deterministic (derandomized) so CI is repeatable:
- the schema as published: random models, ids, tasks and bodies (mostly validation paths);
- the same operations with `model` pinned to the app's live SigLIP2 and image fields that are
  sometimes a real PNG, so random labels, texts, inputs and options reach the model itself.
A third pass sends every operation of the `guarded` app (auth on) without a key: 401 everywhere
but the open paths, as that app's schema says. Each app's schema is the one its own ingress
replica publishes, so it states that app's configuration (caps, data: URLs only, auth).
"""

from __future__ import annotations

import copy
from collections import Counter

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve.auth import OPEN_PATHS
from serve.protocol import DATA_IMAGE_URL_PATTERN
from tests.hardening_apps import QUEUED_MODEL
from tests.helpers import data_url, png_bytes

EXAMPLES = 25
OPERATIONS = [
    ("/v1/chat/completions", "POST"),
    ("/v1/embeddings", "POST"),
    ("/v1/classifications", "POST"),
    ("/v1/scores", "POST"),
    ("/v1/vision/{model_name}/{task_name}", "POST"),
    ("/v1/models/{model_id}/interest", "POST"),
    ("/v1/models/{model_id}", "GET"),
]
PINNED = [("/v1/embeddings", "POST"), ("/v1/classifications", "POST"), ("/v1/scores", "POST")]
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def pinned_schema(spec: dict) -> dict:
    """The published schema with `model` fixed to the live SigLIP2 and image fields sometimes valid."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    published = schemas["ClassificationRequest"]["properties"]["image"]  # data: URLs only on this app
    image = {"anyOf": [{"type": "string", "enum": [data_url(png_bytes((40, 30)))]}, published]}
    for name in ("EmbeddingRequest", "ClassificationRequest", "ScoreRequest"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [QUEUED_MODEL]}
    schemas["ClassificationRequest"]["properties"]["image"] = image
    schemas["ScoreRequest"]["properties"]["images"]["items"] = image
    schemas["ScoreRequest"]["properties"]["images"]["maxItems"] = 4
    # Options within this model's range, so most cases get past validation to the model with random
    # text (labels, texts and templates already follow the published constraints).
    patches = {"anyOf": [{"type": "integer", "minimum": 16, "maximum": 256}, {"type": "null"}]}
    for name in ("EmbeddingRequest", "ClassificationRequest", "ScoreRequest"):
        schemas[name]["properties"]["max_num_patches"] = patches
    text = {"type": "string", "minLength": 1}
    schemas["EmbeddingRequest"]["properties"]["input"] = {
        "anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": 8}]
    }
    return spec


def fuzz(
    spec: dict, operations: list[tuple[str, str]], base_url: str, examples: int = EXAMPLES
) -> tuple[list[str], Counter]:
    """Run each operation's generated cases: (descriptions of any 5xx or undocumented answers, count by status)."""
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment: straight to 127.0.0.1
    failures: list[str] = []
    statuses: Counter = Counter()
    for path, method in operations:
        operation = schema[path][method]

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case) -> None:
            response = case.call(base_url=base_url, session=session, timeout=60)
            statuses[response.status_code] += 1
            where = f"{case.method} {case.formatted_path}: {response.status_code}"
            if response.status_code >= 500:
                failures.append(f"{where} {response.text[:300]}")
            elif response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            try:
                case.validate_response(response, checks=CONFORMANCE)
            except (FailureGroup, AssertionError) as error:
                failures.append(f"{where} is not what the schema documents: {str(error)[:1500]}")

        run()
    return failures, statuses


def test_fuzzing_the_published_schema_gives_no_server_errors(faults):
    spec = httpx.get(f"{faults.url}/openapi.json", timeout=30).json()
    # The schema is this app's: it fetches no http(s) image URLs, and auth is off.
    images = spec["components"]["schemas"]["ScoreRequest"]["properties"]["images"]
    assert images["items"]["pattern"] == DATA_IMAGE_URL_PATTERN
    assert "securitySchemes" not in spec["components"]
    failures, statuses = fuzz(spec, OPERATIONS, faults.url)
    assert failures == [], statuses


def test_fuzzing_a_live_model_gives_no_server_errors(faults):
    spec = httpx.get(f"{faults.url}/openapi.json", timeout=30).json()
    failures, statuses = fuzz(pinned_schema(spec), PINNED, faults.url)
    assert failures == [], statuses
    assert statuses[200] > 0, f"no generated request reached the model: {statuses}"


def test_fuzzing_without_a_key_gets_the_documented_401(guarded):
    spec = httpx.get(f"{guarded.url}/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]
    operations = [(path, method.upper()) for path, methods in spec["paths"].items() for method in methods]
    failures, statuses = fuzz(spec, operations, guarded.url, examples=5)
    assert failures == [], statuses
    open_operations = sum(path in OPEN_PATHS for path, _ in operations)
    assert set(statuses) == ({200, 401} if open_operations else {401}), statuses
