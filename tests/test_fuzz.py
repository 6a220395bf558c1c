"""Schemathesis fuzzing of a running gateway's own /openapi.json: whatever a client sends, no 5xx.

The target is the `faults` app (tests/hardening_apps.py), whose `images.allow_http` is false: any
http(s) image URL the fuzzer invents is refused before it is resolved, so the gateway never
contacts any host on the fuzzer's behalf, and all traffic stays on 127.0.0.1. (The main session
gateway keeps URL fetching on, and its default policy allows public hosts: it must not be fuzzed.)

Two passes, 25 examples per operation each, deterministic (derandomized) so CI is repeatable:
- the schema as published: random models, ids, tasks and bodies (mostly validation paths);
- the same operations with `model` pinned to the app's live SigLIP2 and image fields that are
  sometimes a real PNG, so random labels, texts, inputs and options reach the model itself.
"""

from __future__ import annotations

import copy
from collections import Counter

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

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


def pinned_schema(spec: dict) -> dict:
    """The published schema with `model` fixed to the live SigLIP2 and image fields sometimes valid."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    image = {"anyOf": [{"type": "string", "enum": [data_url(png_bytes((40, 30)))]}, {"type": "string", "minLength": 1}]}
    for name in ("EmbeddingRequest", "ClassificationRequest", "ScoreRequest"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [QUEUED_MODEL]}
    schemas["ClassificationRequest"]["properties"]["image"] = image
    schemas["ScoreRequest"]["properties"]["images"]["items"] = image
    schemas["ScoreRequest"]["properties"]["images"]["maxItems"] = 4
    # Mostly-valid options, so most cases get past validation to the model with random text.
    patches = {"anyOf": [{"type": "integer", "minimum": 16, "maximum": 256}, {"type": "null"}]}
    text = {"type": "string", "pattern": r"\S"}
    for name in ("EmbeddingRequest", "ClassificationRequest", "ScoreRequest"):
        schemas[name]["properties"]["max_num_patches"] = patches
    schemas["EmbeddingRequest"]["properties"]["dimensions"] = {"type": "null"}
    schemas["EmbeddingRequest"]["properties"]["input"] = {
        "anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": 8}]
    }
    schemas["ClassificationRequest"]["properties"]["labels"]["items"] = text
    schemas["ClassificationRequest"]["properties"]["prompt_template"] = {
        "anyOf": [{"type": "string", "pattern": r"\{label\}"}, {"type": "null"}]
    }
    schemas["ScoreRequest"]["properties"]["texts"]["items"] = text
    return spec


def fuzz(spec: dict, operations: list[tuple[str, str]], base_url: str) -> tuple[list[str], Counter]:
    """Run each operation's generated cases: (descriptions of any 5xx answers, count by status)."""
    schema = schemathesis.openapi.from_dict(spec)
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment: straight to 127.0.0.1
    failures: list[str] = []
    statuses: Counter = Counter()
    for path, method in operations:
        operation = schema[path][method]

        @settings(
            max_examples=EXAMPLES,
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
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        run()
    return failures, statuses


def test_fuzzing_the_published_schema_gives_no_server_errors(faults):
    spec = httpx.get(f"{faults.url}/openapi.json", timeout=30).json()
    failures, statuses = fuzz(spec, OPERATIONS, faults.url)
    assert failures == [], statuses


def test_fuzzing_a_live_model_gives_no_server_errors(faults):
    spec = httpx.get(f"{faults.url}/openapi.json", timeout=30).json()
    failures, statuses = fuzz(pinned_schema(spec), PINNED, faults.url)
    assert failures == [], statuses
    assert statuses[200] > 0, f"no generated request reached the model: {statuses}"
