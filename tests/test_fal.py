"""fal.ai's synchronous surface (/fal/...): the unmodified `fal_client`, configured by environment
variables only, against a gateway over TLS on 127.0.0.1.

The gateway is tests/fal_gateway.py in a subprocess with its own Ray (the session's gateway speaks
plain http, and there is one Serve per Ray): Florence-2-large, API keys on, a certificate from
tools/selfsigned.py. fal_client runs in another subprocess (tests/fal_client_calls.py) with only
FAL_RUN_HOST, FAL_KEY and SSL_CERT_FILE set, where an audit hook refuses and reports any lookup or
connection that is not loopback and fal's upload functions are counted. The first tests need no Ray:
app ids, fal's error shapes, and the queue status bodies of serve/fal/protocol.py read by fal_client's
own parser.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve.config import ModelSpec
from serve.errors import APIError, bad_request
from serve.fal.apps import FAL_OWNER, app_ids, app_model
from serve.fal.errors import InvalidBody, fal_error_response, parse_body
from serve.fal.protocol import (
    REQUEST_ID_HEADER,
    CompletedStatus,
    InProgressStatus,
    Log,
    QueuedStatus,
    QueueURLs,
    sse_event,
    wants_logs,
)
from serve.protocol import VisionTaskRequest
from tests.helpers import BLIP, FLORENCE_BASE, KOSMOS, LOCAL_CONFIG, ROOT, data_url, local_args, png_bytes
from tools.selfsigned import TLSFiles, tls_config, write_certificates

KEY = "fal-test-key-0123456789abcdef"
OTHER_KEY = "fal-test-other-key-0123456789"  # a second caller: its request ids are not KEY's
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"gateway-webhook-secret-for-tests").decode()
OD_APP = "fal-ai/florence-2-large/object-detection"


def local_specs() -> list[ModelSpec]:
    return [ModelSpec.model_validate(model) for model in local_args()["models"]]


# ----- app ids, errors, protocol: no Ray -----


def test_every_generative_task_of_the_catalog_has_app_ids():
    ids = {str(app) for app in app_ids(local_specs())}
    assert {
        "fal-ai/florence-2-large/object-detection",
        "microsoft/florence-2-large/object-detection",
        "fal-ai/florence-2-base/ocr-with-region",
        "fal-ai/kosmos-2-patch14-224/grounded-vqa",
        "Salesforce/blip-image-captioning-base/conditional-caption",
    } <= ids
    assert len([i for i in ids if i.startswith("fal-ai/florence-2-large/")]) == 15
    assert not [i for i in ids if "siglip2" in i], "SigLIP2's endpoints are OpenAI's: no fal app ids"


def test_an_app_id_names_a_model_by_deployment_name_and_owner():
    by_name = {spec.deployment_name: spec for spec in local_specs()}
    for owner in (FAL_OWNER, "FAL-AI", "microsoft", "Microsoft"):
        assert app_model(by_name, owner, "florence-2-large").id == "microsoft/Florence-2-large"
    assert app_model(by_name, "salesforce", "blip-image-captioning-base").id == "Salesforce/blip-image-captioning-base"
    for owner, name in (("google", "florence-2-large"), (FAL_OWNER, "Florence-2-large"), (FAL_OWNER, "nope")):
        with pytest.raises(APIError) as refused:
            app_model(by_name, owner, name)
        assert refused.value.status == 404 and refused.value.code == "app_not_found"
        assert "fal-ai/florence-2-large" in refused.value.message


def body_of(response) -> dict[str, Any]:
    return json.loads(response.body)


def test_input_errors_are_fal_validation_errors_with_the_envelope_beside():
    refused = fal_error_response(bad_request("region: x2 must be > x1", param="region.x2"), "req-1")
    assert refused.status_code == 422 and refused.headers[REQUEST_ID_HEADER] == "req-1"
    body = body_of(refused)
    item = {"loc": ["body", "region", "x2"], "msg": "region: x2 must be > x1", "type": "value_error"}
    assert body["detail"] == [item]
    assert body["error"] == {"message": "region: x2 must be > x1", "type": "invalid_request_error",
                             "param": "region.x2", "code": None}  # fmt: skip

    with pytest.raises(InvalidBody) as missing:
        parse_body(b'{"text_input": "x"}', VisionTaskRequest)
    body = body_of(fal_error_response(missing.value, "req-2"))
    assert body["detail"] == [{"loc": ["body", "image_url"], "msg": "Field required", "type": "missing"}]
    assert body["error"]["param"] == "image_url"
    for raw, kind in ((b"{not json", "json_invalid"), (b"\xff\xfe", "json_invalid"), (b"[1]", "model_type")):
        with pytest.raises(InvalidBody) as invalid:
            parse_body(raw, VisionTaskRequest)
        response = fal_error_response(invalid.value, "req-3")
        assert response.status_code == 422 and body_of(response)["detail"][0]["type"] == kind


def test_other_errors_keep_their_status_with_detail_and_error_type():
    timeout = APIError(504, "did not start", type="timeout_error", code="model_timeout", headers={"Retry-After": "10"})
    response = fal_error_response(timeout, "req-4")
    assert response.status_code == 504
    assert response.headers["retry-after"] == "10" and response.headers["x-fal-error-type"] == "request_timeout"
    body = body_of(response)
    assert (body["detail"], body["error_type"]) == ("did not start", "request_timeout")
    assert body["error"]["code"] == "model_timeout"
    unknown = fal_error_response(APIError(404, "no task", param="task", code="task_not_found"), "req-5")
    assert unknown.status_code == 404 and body_of(unknown)["error_type"] == "task_not_found"
    assert body_of(fal_error_response(bad_request("no body"), "req-6"))["error_type"] == "bad_request"


def test_queue_status_bodies_parse_with_fal_clients_own_parser():
    from fal_client.client import Completed, InProgress, Queued, SyncRequestHandle
    from fal_client.client import QUEUE_URL_FORMAT

    handle = SyncRequestHandle.from_request_id(None, "fal-ai/florence-2-large/caption", "req-7")
    urls = QueueURLs.of(QUEUE_URL_FORMAT, "fal-ai", "florence-2-large", "req-7")
    assert (urls.response_url, urls.status_url, urls.cancel_url) == (
        handle.response_url, handle.status_url, handle.cancel_url
    ), "the URLs fal_client builds itself from an app id and a request id"
    common = {"request_id": "req-7", **urls.model_dump()}
    log = Log(message="started", timestamp="2026-12-01T00:00:00Z")
    bodies = [
        QueuedStatus(queue_position=2, **common),
        InProgressStatus(logs=None, **common),
        CompletedStatus(logs=[log], **common),
        CompletedStatus(logs=None, error="cancelled", error_type="client_cancelled", **common),
    ]
    parsed = [handle._parse_status(json.loads(body.model_dump_json())) for body in bodies]
    assert parsed[0] == Queued(position=2)
    assert parsed[1] == InProgress(logs=None)
    assert isinstance(parsed[2], Completed) and parsed[2].logs[0]["message"] == "started"
    assert parsed[2].metrics == {"inference_time": None}
    assert (parsed[3].error, parsed[3].error_type) == ("cancelled", "client_cancelled")
    event = sse_event(bodies[1])
    assert event.startswith("data: {") and event.endswith("}\n\n") and '"logs":null' in event
    assert [wants_logs(v) for v in ("true", "1", "false", "0", None)] == [True, True, False, False, False]


def test_webhook_signatures_are_standard_webhooks_and_targets_pass_the_address_policy():
    import asyncio

    from serve.fal.webhooks import WebhookRefused, check_url, sign, signed_headers, verify
    from serve.netguard import HostPolicy

    # the Standard Webhooks specification's own example
    secret, body = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    headers = signed_headers(secret, "req-1", body, now=1000)
    assert verify(secret, headers, body, now=1100)
    assert not verify(secret, headers, body + b" ", now=1100), "another body"
    assert not verify(secret, headers, body, now=2000), "too old: a replay"
    assert not verify("whsec_" + base64.b64encode(b"other").decode(), headers, body, now=1100)

    async def refused(url: str, policy: HostPolicy) -> str | None:
        try:
            await check_url(url, policy)
        except WebhookRefused as error:
            return str(error)
        return None

    public = HostPolicy()
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.1/", "http://[::1]/", "http://0x7f000001/", "ftp://x.org/",
                "http://user:pw@example.com/", "not a url"):  # fmt: skip
        assert asyncio.run(refused(url, public)), url
    assert asyncio.run(refused("http://127.0.0.1:9/hook", HostPolicy(allow_hosts=["127.0.0.1"]))) is None


def test_make_cert_writes_a_certificate_and_a_tls_config_serve_accepts(tmp_path):
    from cryptography import x509
    from ray.serve.schema import ServeDeploySchema

    from tools.selfsigned import main

    assert main(["--out", str(tmp_path), "--config", str(LOCAL_CONFIG), "--port", "8443"]) == 0
    assert (tmp_path / "gateway.key").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("ca.key*")), "the CA's key is never written"
    leaf = x509.load_pem_x509_certificate((tmp_path / "gateway.crt").read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    config = ServeDeploySchema.model_validate(yaml.safe_load((tmp_path / "local-tls.yaml").read_text()))
    options = config.http_options
    assert (options.host, options.port, options.ssl_certfile, options.ssl_keyfile) == (
        "127.0.0.1", 8443, str(tmp_path / "gateway.crt"), str(tmp_path / "gateway.key")
    )
    assert config.applications[0].args == local_args(), "the same applications, only served over https"


# ----- a gateway over TLS, and fal_client against it -----


@dataclass
class TLSGateway:
    url: str
    files: TLSFiles
    state: Path  # the gateway's SQLite store is state/gateway.sqlite3

    def client(self, **kwargs) -> httpx.Client:
        verify = ssl.create_default_context(cafile=self.files.cafile)
        return httpx.Client(base_url=self.url, verify=verify, trust_env=False, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def tls_gateway(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> TLSGateway:
    work = tmp_path_factory.mktemp("fal")
    files = write_certificates(work / "certs")
    ready, log = work / "ready.json", work / "gateway.log"
    env = {**os.environ, "FAL_TEST_GATEWAY_KEY": f"{KEY},{OTHER_KEY}", "GIGAROUTER_WEBHOOK_SECRET": WEBHOOK_SECRET}
    env.pop("RAY_ADDRESS", None)  # never join the session's cluster
    command = [
        sys.executable, "-m", "tests.fal_gateway", "--checkpoints", str(checkpoints),
        "--certs", str(work / "certs"), "--state", str(work), "--ready", str(ready),
    ]  # fmt: skip
    with log.open("w") as output:
        # Its own process group: if it does not stop, its Ray processes go with it.
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert process.poll() is None, f"the TLS gateway exited ({process.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the TLS gateway was not ready in 180 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield TLSGateway(json.loads(ready.read_text())["url"], files, work)
    finally:
        process.stdin.close()  # it stops Serve and its Ray
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_fal_client(gateway: TLSGateway, plan: list[dict[str, Any]], timeout_s: float = 120) -> dict[str, Any]:
    """The calls of `plan` by fal_client in a process whose environment configures nothing else."""
    host = gateway.url.removeprefix("https://")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(Path(gateway.files.cafile).parent),  # no ~/.fal login tokens of this machine
        "FAL_RUN_HOST": f"{host}/fal",
        "FAL_QUEUE_RUN_HOST": f"{host}/fal/queue",
        "FAL_KEY": KEY,
        "SSL_CERT_FILE": gateway.files.cafile,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.fal_client_calls"], cwd=ROOT, env=env, input=json.dumps(plan),
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"fal_client failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


IMAGE = png_bytes((64, 48))
REGION = {"x1": 8, "y1": 6, "x2": 40, "y2": 30}
PLAN = [
    {"app": OD_APP, "arguments": {"image_url": data_url(IMAGE)}},
    {"app": OD_APP, "arguments": {"image_url": data_url(IMAGE)}, "call": "run_async"},
    {"app": "microsoft/florence-2-large/region-to-category", "arguments": {"region": REGION},
     "encode_png": base64.b64encode(IMAGE).decode()},
    {"app": "fal-ai/florence-2-large/caption", "arguments": {"image_url": data_url(IMAGE), "include_image": True}},
    # errors
    {"app": "fal-ai/florence-2-huge/caption", "arguments": {"image_url": data_url(IMAGE)}},
    {"app": "google/florence-2-large/caption", "arguments": {"image_url": data_url(IMAGE)}},
    {"app": "fal-ai/florence-2-large/no-such-task", "arguments": {}},
    {"app": "fal-ai/florence-2-large/caption", "arguments": {"text_input": "a cat"}},
    {"app": "fal-ai/florence-2-large/region-to-category", "arguments": {"image_url": data_url(IMAGE)}},
    {"app": "fal-ai/florence-2-large/caption", "arguments": {"image_url": "data:image/png;base64,AAAA"}},
    {"app": OD_APP, "arguments": {"image_url": data_url(IMAGE)}, "key": "not-a-key-0123456789abcdef"},
]  # fmt: skip


@pytest.fixture(scope="module")
def fal_calls(tls_gateway: TLSGateway) -> dict[str, Any]:
    return run_fal_client(tls_gateway, PLAN)


def test_fal_client_run_answers_what_the_task_endpoint_answers(tls_gateway, fal_calls):
    with tls_gateway.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        image = {"image_url": data_url(IMAGE)}
        direct = http.post("/v1/vision/florence-2-large/object-detection", json=image)
        caption = http.post("/v1/vision/florence-2-large/caption", json={**image, "include_image": True})
        category = http.post("/v1/vision/florence-2-large/region-to-category", json={**image, "region": REGION})
    assert direct.status_code == 200, direct.text
    run, run_async, by_owner, annotated = (c.get("ok") for c in fal_calls["calls"][:4])
    assert run == direct.json() and "bboxes" in run["results"]
    assert run_async == direct.json()
    assert by_owner == category.json(), "owner microsoft, image URL from fal_client.encode"
    assert annotated == caption.json() and annotated["image"]["url"].startswith("data:image/png;base64,")


def test_fal_client_reached_nothing_but_the_gateway_and_uploaded_nothing(tls_gateway, fal_calls):
    port = tls_gateway.url.rsplit(":", 1)[1]
    assert fal_calls["run_url"] == f"https://127.0.0.1:{port}/fal/"
    assert fal_calls["refused"] == []
    assert fal_calls["connections"] and set(fal_calls["connections"]) == {f"127.0.0.1:{port}"}
    assert set(fal_calls["lookups"]) == {"127.0.0.1"}
    assert fal_calls["uploads"] == []


def test_fal_client_reads_the_errors(fal_calls):
    errors = [c["error"] for c in fal_calls["calls"][4:]]
    huge, owner, task, missing, no_region, bad_image, bad_key = errors
    for error in (huge, owner, task):
        assert error["status"] == 404 and isinstance(error["message"], str)
    assert huge["error_type"] == owner["error_type"] == "app_not_found" and "fal-ai/florence-2-large" in huge["message"]
    assert task["error_type"] == "task_not_found" and "object-detection" in task["message"]
    assert missing["status"] == 422 and missing["message"][0]["loc"] == ["body", "image_url"]
    assert no_region["status"] == 422 and no_region["message"][0]["loc"] == ["body", "region"]
    assert bad_image["status"] == 422 and bad_image["message"][0]["loc"] == ["body", "image_url"]
    assert missing["body"]["error"]["param"] == "image_url", "the gateway's envelope beside fal's detail"
    for error in errors[:-1]:
        assert error["headers"][REQUEST_ID_HEADER], "fal_client resends a 5xx that lacks it"
    assert bad_key["status"] == 401 and bad_key["body"]["error"]["code"] == "invalid_api_key"


def test_bad_requests_over_plain_http_get_fal_errors_never_a_5xx(tls_gateway):
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        malformed = http.post("/fal/fal-ai/florence-2-large/caption", content=b"{not json",
                              headers={"content-type": "application/json"})  # fmt: skip
        assert malformed.status_code == 422 and malformed.json()["detail"][0]["type"] == "json_invalid"
        assert malformed.json()["error"]["code"] == "invalid_json"
        empty = http.post("/fal/fal-ai/florence-2-large/caption")
        assert empty.status_code == 422 and empty.headers[REQUEST_ID_HEADER]
        wrong_method = http.get("/fal/fal-ai/florence-2-large/caption")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        queue = http.post("/fal/queue/fal-ai/florence-2-large/caption", json={})
        assert queue.status_code == 422 and queue.json()["detail"][0]["loc"] == ["body", "image_url"]
        nowhere = http.post("/fal/fal-ai/florence-2-large", json={})
        assert nowhere.status_code == 404 and nowhere.json()["error_type"] == "not_found"
        given_id = http.post("/fal/fal-ai/florence-2-large/ocr", json={"image_url": data_url(IMAGE)},
                             headers={"x-request-id": "req-mine"})  # fmt: skip
        assert given_id.status_code == 200 and given_id.headers[REQUEST_ID_HEADER] == "req-mine"
    with tls_gateway.client() as http:
        assert http.post("/fal/fal-ai/florence-2-large/caption", json={}).status_code == 401


def test_plain_http_is_refused_on_the_tls_port(tls_gateway):
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_gateway.url.replace("https://", "http://") + "/health", timeout=5, trust_env=False)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
        httpx.get(tls_gateway.url + "/health", timeout=5, trust_env=False)


def test_make_run_announces_a_tls_config(tls_gateway, tmp_path):
    from serve.announce import address, verification, wait_ready

    port = int(tls_gateway.url.rsplit(":", 1)[1])
    config = tmp_path / "local-tls.yaml"
    config.write_text(yaml.safe_dump(tls_config(yaml.safe_load(LOCAL_CONFIG.read_text()), tls_gateway.files, port)))
    assert address(config) == tls_gateway.url
    ready, body = wait_ready(address(config), timeout_s=10, verify=verification(config))
    assert ready and body["status"] == "ready"


# ----- the queue (/fal/queue/): fal_client's submit/subscribe/status/result/cancel, webhooks, runners -----

CAPTION_APP = "fal-ai/florence-2-large/caption"
BLIP_APP = "fal-ai/blip-image-captioning-base/caption"
BASE_APP = "fal-ai/florence-2-base/caption"
KOSMOS_APP = "fal-ai/kosmos-2-patch14-224/grounded-caption"
IMAGE_ARGS = {"image_url": data_url(IMAGE)}


def database(gateway: TLSGateway) -> sqlite3.Connection:
    """The gateway's store, read (and, for expiry, written) beside it: SQLite in WAL mode allows it."""
    connection = sqlite3.connect(gateway.state / "gateway.sqlite3", timeout=30)
    connection.row_factory = sqlite3.Row
    return connection


def job_row(gateway: TLSGateway, job_id: str) -> sqlite3.Row:
    with closing(database(gateway)) as connection:
        return connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def usage_rows(gateway: TLSGateway, request_id: str) -> int:
    """Usage rows of a job's runs: its request id, and `{id}.{attempt}` for reruns."""
    with closing(database(gateway)) as connection:
        query = "SELECT COUNT(*) FROM usage WHERE request_id = ? OR request_id LIKE ?"
        return connection.execute(query, (request_id, request_id + ".%")).fetchone()[0]


def replicas(gateway: TLSGateway, model: str) -> int:
    with gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        return http.get(f"/v1/models/{model}").json()["replicas"]


def wait_completed(http: httpx.Client, status_url: str, timeout_s: float = 120) -> dict[str, Any]:
    """Poll a status URL until COMPLETED; errors of a replica being restarted are waited through."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:  # while no ingress replica is up, Serve's proxy answers 5xx (or nothing)
            answer = http.get(status_url, params={"logs": "1"})
            if answer.status_code < 300 and answer.json()["status"] == "COMPLETED":
                return answer.json()
            assert answer.status_code < 400 or answer.status_code >= 500, answer.text
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{status_url} did not complete in {timeout_s} s")


QUEUE_PLAN = [
    {"call": "subscribe", "app": OD_APP, "arguments": IMAGE_ARGS},
    {"call": "subscribe", "app": BLIP_APP, "arguments": IMAGE_ARGS},  # a coming-soon model, woken from zero
    {"call": "submit_status_result", "app": OD_APP, "arguments": IMAGE_ARGS},
    {"call": "subscribe_async", "app": OD_APP, "arguments": IMAGE_ARGS},
    {"call": "submit_async", "app": CAPTION_APP, "arguments": IMAGE_ARGS},
    # errors
    {"call": "subscribe", "app": "fal-ai/florence-2-huge/caption", "arguments": IMAGE_ARGS},
    {"call": "subscribe", "app": CAPTION_APP, "arguments": {"text_input": "no image"}},
    {"call": "subscribe", "app": CAPTION_APP, "arguments": {"image_url": "data:image/png;base64,AAAA"}},
    {"call": "status", "app": OD_APP, "request_id": "no-such-request"},
    {"call": "result", "app": OD_APP, "request_id": "no-such-request"},
    {"call": "cancel", "app": OD_APP, "request_id": "no-such-request"},
    {"call": "submit", "app": OD_APP, "arguments": IMAGE_ARGS, "webhook_url": "http://169.254.169.254/latest"},
]  # fmt: skip


@pytest.fixture(scope="module")
def queue_calls(tls_gateway: TLSGateway) -> dict[str, Any]:
    assert replicas(tls_gateway, BLIP) == 0, "BLIP starts at zero replicas"
    return run_fal_client(tls_gateway, QUEUE_PLAN, timeout_s=300)


def test_fal_client_subscribes_submits_and_polls_through_the_queue(tls_gateway, queue_calls):
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        direct = http.post("/v1/vision/florence-2-large/object-detection", json=IMAGE_ARGS).json()
        caption = http.post("/v1/vision/florence-2-large/caption", json=IMAGE_ARGS).json()
    subscribed, woken, polled, subscribed_async, submitted_async = queue_calls["calls"][:5]
    assert subscribed["ok"] == direct and subscribed_async["ok"] == direct and polled["ok"] == direct
    assert submitted_async["ok"] == caption
    for updates in (subscribed["updates"], subscribed_async["updates"]):
        assert updates[-1]["status"] == "Completed" and updates[-1]["metrics"]["inference_time"] > 0
        assert {"Queued", "InProgress"} & {u["status"] for u in updates[:-1]}, updates
    # the coming-soon model: the job waited through its start with no client connection held open
    assert isinstance(woken["ok"]["results"], str)
    waiting = [u["logs"] for u in woken["updates"] if u["status"] == "InProgress" and u["logs"]]
    assert waiting and waiting[0][0].startswith("waiting for the model to start"), woken["updates"]
    final_logs = woken["updates"][-1]["logs"]
    assert final_logs[-1] == "done", final_logs
    if any("(lease expired); queued again" in line for line in final_logs):
        # its runner stalled past the test's short lease on a loaded host: the rerun found the model up
        assert any(line.startswith("running (attempt 2") for line in final_logs), final_logs
    else:
        assert "the model is up; running" in final_logs, final_logs
    assert replicas(tls_gateway, BLIP) >= 1
    request_id = polled["request_id"]
    base = f"{tls_gateway.url}/fal/queue/fal-ai/florence-2-large/requests/{request_id}"
    assert polled["urls"] == [f"{base}/status", base, f"{base}/cancel"]
    assert polled["statuses"][-1]["status"] == "Completed" and polled["statuses"][-1]["logs"][-1] == "done"


def test_fal_client_reads_the_queues_errors_and_reached_only_the_gateway(tls_gateway, queue_calls):
    errors = [c.get("error") for c in queue_calls["calls"][5:]]
    unknown_app, no_image, bad_image, status, result, cancel, webhook = errors
    assert unknown_app["status"] == 404 and unknown_app["error_type"] == "app_not_found"
    assert no_image["status"] == 422 and no_image["message"][0]["loc"] == ["body", "image_url"]
    assert bad_image["status"] == 422 and bad_image["message"][0]["loc"] == ["body", "image_url"], "failed in the job"
    for error in (status, result, cancel):
        assert error["status"] == 404 and error["headers"][REQUEST_ID_HEADER]
    assert status["error_type"] == "request_not_found" and cancel["body"]["status"] == "NOT_FOUND"
    assert webhook["status"] == 422 and webhook["message"][0]["loc"] == ["query", "fal_webhook"]
    assert "not allowed" in webhook["message"][0]["msg"]
    port = tls_gateway.url.rsplit(":", 1)[1]
    assert queue_calls["refused"] == [] and queue_calls["uploads"] == []
    assert set(queue_calls["connections"]) == {f"127.0.0.1:{port}"}


CANCEL_PLAN = [
    {"call": "submit", "app": BASE_APP, "arguments": IMAGE_ARGS},  # a model at zero: both runners busy with a start
    {"call": "submit", "app": BASE_APP, "arguments": IMAGE_ARGS},
    {"call": "wait_status", "app": BASE_APP, "request_id": "$0", "until": "InProgress"},
    {"call": "wait_status", "app": BASE_APP, "request_id": "$1", "until": "InProgress"},
    {"call": "submit", "app": OD_APP, "arguments": IMAGE_ARGS},  # so this one waits in the queue
    {"call": "status", "app": OD_APP, "request_id": "$4"},
    {"call": "cancel", "app": OD_APP, "request_id": "$4"},
    {"call": "status", "app": OD_APP, "request_id": "$4"},
    {"call": "cancel", "app": OD_APP, "request_id": "$4"},
    {"call": "result", "app": OD_APP, "request_id": "$4"},
    {"call": "cancel", "app": BASE_APP, "request_id": "$0"},
]  # fmt: skip


def test_fal_client_cancels_a_queued_request_and_not_a_running_one(tls_gateway):
    assert replicas(tls_gateway, FLORENCE_BASE) == 0
    calls = run_fal_client(tls_gateway, CANCEL_PLAN, timeout_s=180)["calls"]
    assert calls[2]["ok"]["status"] == calls[3]["ok"]["status"] == "InProgress", calls[:4]
    queued, cancelled, after, again, result, running = (c.get("ok") or c.get("error") for c in calls[5:])
    assert queued == {"status": "Queued", "position": 0}
    assert cancelled == "cancelled"
    assert after["status"] == "Completed" and after["error_type"] == "client_cancelled"
    assert again["status"] == 400 and again["body"]["status"] == "ALREADY_COMPLETED"
    assert result["status"] == 499 and result["error_type"] == "client_cancelled"
    assert running["status"] == 400 and running["body"]["status"] == "ALREADY_COMPLETED"
    cancelled_id = calls[4]["ok"]
    assert job_row(tls_gateway, cancelled_id)["attempts"] == 0, "a cancelled request never ran"
    assert usage_rows(tls_gateway, cancelled_id) == 0
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        for request_id in (calls[0]["ok"], calls[1]["ok"]):
            url = f"{tls_gateway.url}/fal/queue/fal-ai/florence-2-base/requests/{request_id}"
            assert wait_completed(http, f"{url}/status").get("error") is None
            assert isinstance(http.get(url).json()["results"], str)


def runner_pids(gateway: TLSGateway) -> set[int]:
    """The ingress replicas whose runners have run jobs so far (the first log line names the runner),
    still alive as this gateway's Serve replicas of the Gateway deployment."""
    with closing(database(gateway)) as connection:
        logs = [json.loads(row[0]) for row in connection.execute("SELECT logs FROM jobs")]
    owners = {line["message"].rsplit("runner ", 1)[1].rstrip(")") for lines in logs for line in lines
              if "(attempt " in line["message"]}  # fmt: skip
    pids = set()
    for owner in owners:
        pid = int(owner.split(":")[1])
        try:
            if "Gateway" in Path(f"/proc/{pid}/cmdline").read_text():
                pids.add(pid)
        except OSError:
            pass
    return pids


def test_a_job_survives_the_death_of_the_replica_running_it(tls_gateway):
    """kill -9 of every ingress replica, the one holding the job's lease among them, mid-job (waiting
    for a model's start): Serve restarts them (a whole new ingress), the lease runs out, a new runner
    takes the job again and finishes it."""
    assert replicas(tls_gateway, KOSMOS) == 0
    others = runner_pids(tls_gateway)
    assert len(others) == 2, "both ingress replicas have run jobs (the cancel test kept both busy)"
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        submitted = http.post(f"/fal/queue/{KOSMOS_APP}", json=IMAGE_ARGS)
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["request_id"]
        deadline = time.monotonic() + 30
        while (row := job_row(tls_gateway, job_id))["lease_owner"] is None:
            assert time.monotonic() < deadline, "no runner took the job"
            time.sleep(0.02)
        assert row["status"] == "IN_PROGRESS"
        pid = int(row["lease_owner"].split(":")[1])
        assert pid in others
        for victim in [pid, *(others - {pid})]:
            os.kill(victim, signal.SIGKILL)
        done = wait_completed(http, submitted.json()["status_url"], timeout_s=180)
        assert done.get("error") is None, done
        result = http.get(submitted.json()["response_url"])
        assert result.status_code == 200 and "results" in result.json()
    row = job_row(tls_gateway, job_id)
    assert row["attempts"] == 2 and row["status"] == "COMPLETED"
    logs = [line["message"] for line in json.loads(row["logs"])]
    assert any("stopped (lease expired); queued again, attempt 2 of 3" in line for line in logs), logs
    rerun = [line for line in logs if "(attempt 2" in line][0]
    assert not any(f":{victim}:" in rerun for victim in others), "the rerun was in a restarted replica"
    deadline = time.monotonic() + 10
    while usage_rows(tls_gateway, job_id) != 1:
        assert time.monotonic() < deadline, "the finished run's usage row"
        time.sleep(0.2)


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: answers 500 to the first delivery of each request, then 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.deliveries: list[tuple[int, dict[str, str], bytes]] = []


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        seen = [d for d in self.server.deliveries if d[1].get("webhook-id") == self.headers.get("webhook-id")]
        status = 500 if not seen else 200
        self.server.deliveries.append((status, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhooks_are_signed_retried_and_carry_the_result(tls_gateway):
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        plan = [
            {"call": "submit", "app": OD_APP, "arguments": IMAGE_ARGS, "webhook_url": hook},
            {"call": "submit", "app": CAPTION_APP, "arguments": {"image_url": "data:image/png;base64,AAAA"},
             "webhook_url": hook},
        ]  # fmt: skip
        ok_id, failed_id = (c["ok"] for c in run_fal_client(tls_gateway, plan)["calls"])
        deadline = time.monotonic() + 60
        while len([d for d in receiver.deliveries if d[0] == 200]) < 2:
            assert time.monotonic() < deadline, receiver.deliveries
            time.sleep(0.1)
    finally:
        receiver.shutdown()
    from serve.fal.webhooks import verify

    by_id: dict[str, list] = {}
    for status, headers, body in receiver.deliveries:
        assert verify(WEBHOOK_SECRET, headers, body), "a valid Standard Webhooks signature"
        assert not verify("whsec_" + base64.b64encode(b"another secret").decode(), headers, body)
        by_id.setdefault(headers["webhook-id"], []).append((status, json.loads(body)))
    assert [status for status, _ in by_id[ok_id]] == [500, 200], "retried after a failed delivery"
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        direct = http.post("/v1/vision/florence-2-large/object-detection", json=IMAGE_ARGS).json()
    ok = by_id[ok_id][-1][1]
    assert (ok["request_id"], ok["status"], ok["payload"]) == (ok_id, "OK", direct)
    failed = by_id[failed_id][-1][1]
    assert (failed["status"], failed["error"]) == ("ERROR", "Invalid status code: 422")
    assert failed["payload"]["detail"][0]["loc"] == ["body", "image_url"]
    row = job_row(tls_gateway, ok_id)
    assert (row["webhook_state"], row["webhook_attempts"]) == ("DELIVERED", 2)


def test_the_status_stream_ends_with_completed(tls_gateway):
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        submitted = http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS).json()
        events = []
        with http.stream("GET", submitted["status_url"] + "/stream", params={"logs": "1"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
    assert events[-1]["status"] == "COMPLETED" and events[-1]["logs"][-1]["message"] == "done"
    assert all(e["request_id"] == submitted["request_id"] for e in events)


def test_expired_results_answer_410(tls_gateway):
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        submitted = http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS).json()
        wait_completed(http, submitted["status_url"])
        with closing(database(tls_gateway)) as connection, connection:
            connection.execute("UPDATE jobs SET result_expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?",
                               (submitted["request_id"],))  # fmt: skip
        for url in (submitted["status_url"], submitted["response_url"]):
            gone = http.get(url)
            assert gone.status_code == 410 and gone.json()["error_type"] == "result_expired", gone.text
            assert "gateway.fal.result_ttl_s" in gone.json()["detail"]


def test_bad_queue_input_gets_fal_errors_never_a_5xx(tls_gateway):
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http, \
            tls_gateway.client(headers={"Authorization": f"Key {OTHER_KEY}"}) as other:  # fmt: skip
        theirs = other.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS).json()
        mine = http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS).json()
        base = "/fal/queue/fal-ai/florence-2-large/requests"
        answers = {
            "unknown app": http.post("/fal/queue/fal-ai/florence-2-huge/caption", json=IMAGE_ARGS),
            "unknown owner": http.post("/fal/queue/google/florence-2-large/caption", json=IMAGE_ARGS),
            "unknown task": http.post("/fal/queue/fal-ai/florence-2-large/no-such-task", json=IMAGE_ARGS),
            "malformed": http.post(f"/fal/queue/{OD_APP}", content=b"{not json",
                                   headers={"content-type": "application/json"}),
            "empty": http.post(f"/fal/queue/{OD_APP}"),
            "private webhook": http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS,
                                         params={"fal_webhook": "http://10.0.0.1/hook"}),
            "metadata webhook": http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS,
                                          params={"fal_webhook": "http://[::ffff:169.254.169.254]/"}),
            "not a webhook URL": http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS,
                                           params={"fal_webhook": "ftp://example.com/x"}),
            "unknown id": http.get(f"{base}/no-such-id/status"),
            "unknown id result": http.get(f"{base}/no-such-id"),
            "their status": http.get(f"{base}/{theirs['request_id']}/status"),
            "their result": http.get(f"{base}/{theirs['request_id']}"),
            "their stream": http.get(f"{base}/{theirs['request_id']}/status/stream"),
            "their cancel": http.put(f"{base}/{theirs['request_id']}/cancel"),
            "other app": http.get(f"/fal/queue/fal-ai/blip-image-captioning-base/requests/{mine['request_id']}/status"),
            "unknown path": http.get(f"{base}/{mine['request_id']}/nope"),
            "wrong method": http.get(f"/fal/queue/{OD_APP}"),
        }  # fmt: skip
        no_key = http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS, headers={"Authorization": ""})
    expected = {
        "unknown app": (404, "app_not_found"), "unknown owner": (404, "app_not_found"),
        "unknown task": (404, "task_not_found"), "malformed": (422, None), "empty": (422, None),
        "private webhook": (422, None), "metadata webhook": (422, None), "not a webhook URL": (422, None),
        "unknown id": (404, "request_not_found"), "unknown id result": (404, "request_not_found"),
        "their status": (404, "request_not_found"), "their result": (404, "request_not_found"),
        "their stream": (404, "request_not_found"), "their cancel": (404, None), "other app": (404, "request_not_found"),
        "unknown path": (404, "not_found"), "wrong method": (405, "method_not_allowed"),
    }  # fmt: skip
    for name, (status, kind) in expected.items():
        answer = answers[name]
        assert answer.status_code == status, (name, answer.text)
        assert answer.headers[REQUEST_ID_HEADER], name
        if kind is not None:
            assert answer.json()["error_type"] == kind, (name, answer.text)
    assert answers["private webhook"].json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    assert answers["their cancel"].json()["status"] == "NOT_FOUND"
    assert no_key.status_code == 401


def test_no_job_runs_twice_with_two_ingress_replicas(tls_gateway):
    """Two ingress replicas' runners lease from one table: a job is run by one runner at a time. A job
    runs again only after its lease expired and the store queued it again (the kill test's job, or one
    whose runner stalled past the short test lease on a loaded machine), never because two runners
    took it: every job's log has a start line for each attempt that got to log one, and a "queued
    again" line from the store before each rerun."""
    with tls_gateway.client(headers={"Authorization": f"Key {KEY}"}) as http:
        submitted = [http.post(f"/fal/queue/{OD_APP}", json=IMAGE_ARGS).json() for _ in range(16)]
        for job in submitted:
            wait_completed(http, job["status_url"])
    with closing(database(tls_gateway)) as connection:
        rows = connection.execute("SELECT id, attempts, logs, status FROM jobs").fetchall()
    mine = {job["request_id"] for job in submitted}
    assert {row["id"] for row in rows if row["id"] in mine and row["status"] == "COMPLETED"} == mine
    ran = [row for row in rows if row["attempts"] > 0]
    for row in ran:
        messages = [line["message"] for line in json.loads(row["logs"])]
        starts = [m for m in messages if "(attempt " in m and ", runner " in m]
        requeued = [m for m in messages if "queued again" in m]
        # a runner killed between leasing a job and logging its start leaves an attempt without a
        # start line (the kill test kills both ingress replicas, whatever the other one just leased)
        assert 1 <= len(starts) <= row["attempts"], (row["id"], messages)
        assert len(requeued) >= row["attempts"] - 1, ("a rerun without its lease expiring", row["id"], messages)
    runners = {json.loads(row["logs"])[0]["message"].rsplit("runner ", 1)[1] for row in ran if row["logs"] != "[]"}
    assert len(runners) >= 2, "jobs ran in more than one ingress replica"
    deadline = time.monotonic() + 10
    once = [job for job in submitted if next(r for r in rows if r["id"] == job["request_id"])["attempts"] == 1]
    assert once, "some of this test's jobs ran once"
    for job in once:
        while usage_rows(tls_gateway, job["request_id"]) != 1:
            assert time.monotonic() < deadline, f"one usage row for {job['request_id']}"
            time.sleep(0.2)
