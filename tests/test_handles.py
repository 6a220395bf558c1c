"""Another Ray Serve application calls the model deployments by name and gets the HTTP results."""

from __future__ import annotations

from ray import serve

from tests.handle_caller import HandleCaller
from tests.helpers import BLIP, FLORENCE_LARGE, SIGLIP, chat, data_url, png_bytes


def test_second_app_calls_models_through_handles(gateway, client):
    png = png_bytes(color="green")
    handle = serve.run(HandleCaller.bind("gigarouter"), name="handle-caller", route_prefix="/handle-caller")
    try:
        result = handle.remote(png).result(timeout_s=180)
    finally:
        serve.delete("handle-caller")

    assert result["blip_from_pil"] == result["blip_from_bytes"]
    blip_http = client.post("/v1/chat/completions", json=chat(BLIP, "", data_url(png))).json()
    assert result["blip_from_pil"].text == blip_http["choices"][0]["message"]["content"]

    od_http = client.post("/v1/chat/completions", json=chat(FLORENCE_LARGE, "<OD>", data_url(png), max_tokens=24)).json()
    assert result["florence_od"].results == od_http["vision"]["results"]

    classify_http = client.post(
        "/v1/classifications", json={"model": SIGLIP, "image": data_url(png), "labels": ["red square", "cat"]}
    ).json()
    assert [label for label, _ in result["siglip_labels"].labels] == [e["label"] for e in classify_http["data"]]
    assert result["siglip_labels"].usage.images == 1
