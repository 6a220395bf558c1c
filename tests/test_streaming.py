"""Token-by-token streaming: the batch streamer on the tiny checkpoints' tokenizers, a model's
`stream` method in this process (no Ray), and `stream: true` chat completions through the session's
gateway with the `openai` SDK and raw server-sent events."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from ray import serve
from transformers import AutoTokenizer

from deployments.blip import Blip
from deployments.florence2 import Florence2
from deployments.kosmos2 import Kosmos2
from deployments.streaming import BatchStreamer, TokenSink, stable_text
from serve.contract import GenerateCall, Generation, GenerationDelta
from serve.image_codec import probe_image
from serve.images import ImageLimits
from tests.helpers import APP_NAME, BLIP, FLORENCE_LARGE, assert_error, chat, data_url, local_args, png_bytes

TINY = Path(__file__).resolve().parent.parent / "checkpoints" / "tiny"
SPECS = {spec["source"]: spec for spec in local_args()["models"]}


# ----- the streamer, on real tokenizers -----


def tokenizer(name: str):
    return AutoTokenizer.from_pretrained(str(TINY / name))


def drained(sink: TokenSink) -> list[str]:
    """What the sink has received so far (callbacks from `send` run once the loop gets a turn)."""

    async def take() -> list[str]:
        await asyncio.sleep(0)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [text async for text in sink.texts(done)]

    return take()


def test_stable_text_holds_back_what_the_next_token_may_change():
    assert stable_text("a caf\ufffd") == "a caf"
    assert stable_text("a café \ufffd\ufffd") == "a café"
    assert stable_text("a dog ") == "a dog"
    assert stable_text("a café 😀") == "a café 😀"
    # with the tokenizer's space clean-up, " '" may still become "'" (" ' s" -> "'s")
    assert stable_text("hello world, it '", cleanup_spaces=True) == "hello world, it"
    assert stable_text("hello world, it '", cleanup_spaces=False) == "hello world, it '"
    assert stable_text("do n", cleanup_spaces=True) == "do"
    assert stable_text("do no", cleanup_spaces=True) == "do no"


def test_the_streamer_splits_rows_skips_finished_and_silent_rows_and_holds_partial_characters():
    tok = tokenizer("florence-2-large")
    pad, eos, start = tok.pad_token_id, tok.eos_token_id, 2
    first = tok("a café 😀 dog", add_special_tokens=False)["input_ids"]  # bytes of é and 😀 span tokens
    second = tok("red", add_special_tokens=False)["input_ids"]
    other = tok("not streamed at all here", add_special_tokens=False)["input_ids"]
    steps = len(first) + 1
    rows = [first + [eos], other + [eos] * steps, second + [eos] + [pad] * steps]

    async def scenario():
        sinks = [TokenSink(), None, TokenSink()]
        decoded: list[int] = []

        def answer(row: int, ids: list[int]) -> str:
            decoded.append(row)
            return tok.decode(ids, skip_special_tokens=True).strip()

        streamer = BatchStreamer(sinks, answer, silent_ids=frozenset(tok.all_special_ids))
        streamer.put(torch.tensor([[start]] * 3))  # the decoder's start tokens
        got: list[list[str]] = [await drained(sinks[0])]
        second_got = await drained(sinks[2])
        for step in range(steps):
            streamer.put(torch.tensor([row[step] for row in rows]))
            got.append(await drained(sinks[0]))
            second_got += await drained(sinks[2])
        streamer.end()
        return got, second_got + await drained(sinks[2]), await drained(sinks[0]), decoded

    got, second_got, at_end, decoded = asyncio.run(scenario())
    pieces = [piece for step in got for piece in step] + at_end
    assert "".join(pieces) == "a café 😀 dog"
    assert len(pieces) >= 4, pieces
    assert all("\ufffd" not in piece for piece in pieces), "an incomplete character is never sent"
    # "caf" goes out before the é is complete; the é with the token that completes it
    sent_so_far = ["".join(p for s in got[: i + 1] for p in s) for i in range(len(got))]
    assert "a caf" in sent_so_far and "a café" in sent_so_far
    assert "".join(second_got) == "red"
    assert 1 not in decoded, "a row without a sink is never decoded"
    # after its end of sequence the second row gets pad tokens: no decode for them
    assert decoded.count(2) <= len(second) + 2


def test_the_streamer_holds_back_what_space_clean_up_would_rewrite():
    tok = copy.deepcopy(tokenizer("blip"))
    tok.clean_up_tokenization_spaces = True
    ids = tok("hello world, it's a test.", add_special_tokens=False)["input_ids"]
    final = tok.decode(ids, skip_special_tokens=True).strip()
    assert final == "hello world, it's a test."  # the clean-up joined " ' s" into "'s"

    async def scenario():
        sink = TokenSink()
        streamer = BatchStreamer(
            [sink], lambda row, got: tok.decode(got, skip_special_tokens=True).strip(), cleanup_spaces=True
        )
        streamer.put(torch.tensor([[tok.bos_token_id]]))
        for token in ids:
            streamer.put(torch.tensor([token]))
        streamer.end()
        return await drained(sink)

    pieces = asyncio.run(scenario())
    assert "".join(pieces) == final
    assert len(pieces) > 3


def test_a_failing_decode_stops_streaming_but_never_generate():
    def broken(row: int, ids: list[int]) -> str:
        raise ValueError("decoder broke")

    async def scenario():
        sink = TokenSink()
        streamer = BatchStreamer([sink], broken)
        streamer.put(torch.tensor([[2]]))  # raises nothing
        streamer.put(torch.tensor([5]))
        streamer.end()
        return streamer.broken, await drained(sink)

    assert asyncio.run(scenario()) == (True, [])


# ----- a model's `stream` method, in this process -----


@pytest.fixture(scope="module")
def image():
    return probe_image(png_bytes(), ImageLimits(), "image")


@pytest.fixture(scope="module")
def florence(checkpoints) -> Florence2:
    return Florence2(SPECS["florence-2-large"], str(checkpoints / "florence-2-large"))


@pytest.fixture(scope="module")
def blip(checkpoints) -> Blip:
    return Blip(SPECS["blip"], str(checkpoints / "blip"))


async def streamed(model, call: GenerateCall) -> tuple[list[str], Generation]:
    pieces, finals = [], []
    async for item in model.stream(call):
        if isinstance(item, GenerationDelta):
            assert not finals, "no piece after the final answer"
            pieces.append(item.text)
        else:
            finals.append(item)
    assert len(finals) == 1
    return pieces, finals[0]


@pytest.mark.parametrize(
    "family,task,text",
    [
        ("florence", "caption", None),
        ("florence", "ocr", None),
        ("blip", "caption", None),
        ("blip", "caption", "a photo of"),
    ],
)
def test_text_answers_stream_token_by_token_and_join_to_the_answer(request, image, family, task, text):
    model = request.getfixturevalue(family)
    call = GenerateCall(image=image, task=task, text=text, max_new_tokens=12)

    async def both():
        return await streamed(model, call), await model.run(call)

    (pieces, final), alone = asyncio.run(both())
    assert len(pieces) > 1, pieces
    assert all(pieces), "no empty pieces"
    assert "".join(pieces) == final.text == alone.text
    assert final.usage == alone.usage and final.replica_ready_at == model.ready_at
    if text:
        assert pieces[0].startswith("a photo of")  # the caption continues the prefix, which comes first


def test_structured_answers_and_beam_search_come_whole_at_the_end(florence, blip, image):
    async def calls():
        return (
            await streamed(florence, GenerateCall(image=image, task="object-detection", max_new_tokens=12)),
            await streamed(blip, GenerateCall(image=image, task="caption", max_new_tokens=12, num_beams=2)),
            await florence.run(GenerateCall(image=image, task="object-detection", max_new_tokens=12)),
        )

    (od_pieces, od), (beam_pieces, beam), od_alone = asyncio.run(calls())
    assert od_pieces == [] and beam_pieces == []
    assert od.text == od_alone.text and isinstance(od.results, dict)
    assert beam.text


def test_kosmos2_answers_at_the_end(checkpoints, image):
    kosmos = Kosmos2(SPECS["kosmos-2"], str(checkpoints / "kosmos-2"))
    pieces, final = asyncio.run(streamed(kosmos, GenerateCall(image=image, task="grounded-caption", max_new_tokens=8)))
    assert pieces == [] and final.text.startswith("An image of")


def test_streaming_and_plain_requests_batched_together_each_get_their_own_answer(blip):
    images = [probe_image(png_bytes(color=c), ImageLimits(), "image") for c in ("red", "green", "blue", "yellow")]
    calls = [GenerateCall(image=i, task="caption", max_new_tokens=10) for i in images]

    async def scenario():
        alone = [await blip.run(call) for call in calls]
        runs = blip.batches_run
        together = await asyncio.gather(
            streamed(blip, calls[0]), blip.run(calls[1]), streamed(blip, calls[2]), blip.run(calls[3])
        )
        return alone, together, blip.batches_run - runs

    blip.reconfigure({"fill_wait_ratio": 0.5})  # the calls arrive a few milliseconds apart: let them meet
    try:
        alone, together, runs = asyncio.run(scenario())
    finally:
        blip.reconfigure({})
    assert runs < 4, "calls shared a run"
    (first_pieces, first), second, (third_pieces, third), fourth = together
    assert "".join(first_pieces) == first.text == alone[0].text
    assert "".join(third_pieces) == third.text == alone[2].text
    assert [second.text, fourth.text] == [alone[1].text, alone[3].text]
    assert len({a.text for a in alone}) > 1, "different images, different captions"


def test_a_stream_left_early_leaves_the_batch_to_the_others(florence, image):
    call = GenerateCall(image=image, task="caption", max_new_tokens=24)

    async def scenario():
        alone = await florence.run(call)

        async def leave_after_first_piece():
            stream = florence.stream(call)
            first = await anext(stream)
            await stream.aclose()
            return first

        left, kept, plain = await asyncio.gather(
            leave_after_first_piece(), streamed(florence, call), florence.run(call)
        )
        after = await streamed(florence, call)
        return alone, left, kept, plain, after

    alone, left, (kept_pieces, kept), plain, (after_pieces, after) = asyncio.run(scenario())
    assert isinstance(left, GenerationDelta) and alone.text.startswith(left.text)
    assert "".join(kept_pieces) == kept.text == plain.text == alone.text
    assert "".join(after_pieces) == after.text == alone.text


# ----- through the gateway -----


@pytest.fixture(scope="module")
def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused-locally", max_retries=0, timeout=120)


def events(client: httpx.Client, body: dict) -> tuple[httpx.Response, list]:
    """A streamed chat completion's events: the JSON chunks, then "[DONE]"."""
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return response, [json.loads(item) for item in data[:-1]]


def contents(chunks: list[dict]) -> list[str]:
    """The pieces of text of a stream's chunks, in order (the first chunk carries the role)."""
    deltas = [c["choices"][0]["delta"] for c in chunks[1:] if c["choices"]]
    return [delta["content"] for delta in deltas if delta.get("content")]


def answer(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def test_sdk_streams_a_blip_caption_token_by_token_with_usage_at_the_end(sdk, image_url):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}}]}]
    alone = sdk.chat.completions.create(model=BLIP, messages=messages, max_tokens=12)
    chunks = list(
        sdk.chat.completions.create(
            model=BLIP, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == alone.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == alone.choices[0].finish_reason
    assert finals[0].model_extra["vision"] == alone.model_extra["vision"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == alone.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == alone.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_raw_sse_streams_a_florence_caption_token_by_token(client, image_url):
    body = chat(FLORENCE_LARGE, "<CAPTION>", image_url, max_tokens=12)
    alone = client.post("/v1/chat/completions", json=body).json()
    _, chunks = events(client, {**body, "stream": True})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = contents(chunks)
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == alone["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["vision"] == alone["vision"]
    assert all("usage" not in c for c in chunks), "usage only when include_usage asks for it"


def test_a_structured_answer_streams_at_the_end(client, image_url):
    body = chat(FLORENCE_LARGE, "<OD>", image_url, max_tokens=16)
    alone = client.post("/v1/chat/completions", json=body).json()
    _, chunks = events(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    text = "".join(contents(chunks))
    assert text == alone["choices"][0]["message"]["content"] == json.dumps(alone["vision"]["results"])
    # role, the answer's text, the finish with the result, the usage: nothing before the answer was whole
    kinds = ["role" if "role" in c["choices"][0]["delta"] else "text" if c["choices"][0]["delta"] else "finish"
             for c in chunks if c["choices"]]
    assert kinds[0] == "role" and kinds[-1] == "finish" and set(kinds[1:-1]) == {"text"}
    assert chunks[-1]["usage"] == alone["usage"]


def test_concurrent_streaming_and_plain_requests_each_get_their_own_answer(client, gateway):
    images = [data_url(png_bytes(color=c)) for c in ("red", "green", "blue", "yellow", "purple", "orange")]
    bodies = [chat(BLIP, "", image, max_tokens=10) for image in images]
    alone = [answer(client.post("/v1/chat/completions", json=body)) for body in bodies]
    assert len(set(alone)) > 1

    def one(index: int) -> tuple[str, int]:
        with httpx.Client(base_url=gateway.url, timeout=120) as http:
            if index % 2:
                return answer(http.post("/v1/chat/completions", json=bodies[index])), 1
            _, chunks = events(http, {**bodies[index], "stream": True})
            return "".join(contents(chunks)), len(contents(chunks))

    replica = serve.get_deployment_handle("blip-image-captioning-base", app_name=APP_NAME)
    before = replica.stats.remote().result(timeout_s=30)
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(one, range(len(bodies))))
    after = replica.stats.remote().result(timeout_s=30)
    assert [text for text, _ in answers] == alone
    assert all(count > 1 for index, (_, count) in enumerate(answers) if index % 2 == 0)
    assert after["items"] - before["items"] == len(bodies)
    assert after["batches"] - before["batches"] < len(bodies), "some of them shared a model run"


def test_bad_input_with_stream_true_is_a_json_error_not_a_stream(client, image_url):
    # found by the gateway: an unknown task token, a picture that is not one
    unknown_task = chat(FLORENCE_LARGE, "<NOT_A_TASK>", image_url, stream=True)
    assert_error(client.post("/v1/chat/completions", json=unknown_task), 400, "messages")
    broken = chat(BLIP, "", "data:image/png;base64,iVBORw0KGgo=", stream=True)
    response = client.post("/v1/chat/completions", json=broken)
    assert response.headers["content-type"].startswith("application/json")
    assert_error(response, 400)
    # found by the replica before its first token: a caption prefix longer than BLIP's positions
    long_prefix = chat(BLIP, "a red square " * 200, image_url, stream=True)
    response = client.post("/v1/chat/completions", json=long_prefix)
    assert response.headers["content-type"].startswith("application/json")
    assert assert_error(response, 400, "messages")["code"] == "context_length_exceeded"


def usage_of(client: httpx.Client, model: str) -> dict:
    rows = client.get("/v1/usage", params={"group_by": "model"}).json()["data"]
    return next((row for row in rows if row["group"] == model), {"requests": 0, "completion_tokens": 0, "images": 0})


def test_a_client_that_leaves_mid_stream_leaves_the_replica_serving_and_is_metered_once(client, gateway, image_url):
    body = chat(BLIP, "", image_url, max_tokens=48)
    alone = client.post("/v1/chat/completions", json=body).json()
    time.sleep(2.5)  # usage rows are written every second
    before = usage_of(client, BLIP)
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if '"content":"' in line and '"role"' not in line:
                    break  # the first piece of text: leave
    _, chunks = events(client, {**body, "stream": True})
    assert "".join(contents(chunks)) == alone["choices"][0]["message"]["content"]
    again = client.post("/v1/chat/completions", json=body).json()
    assert again["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    expected = {"requests": 3, "images": 3, "completion_tokens": 3 * alone["usage"]["completion_tokens"]}
    deadline = time.monotonic() + 15
    while True:
        after = usage_of(client, BLIP)
        grown = {key: after[key] - before[key] for key in expected}
        if grown == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # the request that left counts once, with the whole answer's tokens (its answer was finished)
    assert grown == expected


# ----- failures after the answer began -----


def test_a_failure_mid_stream_is_one_error_event_in_the_envelope():
    from serve.errors import model_unavailable
    from serve.chat_stream import ChatStream, chat_stream

    async def pieces_then(failure: Exception):
        yield "a red"
        yield " square"
        raise failure

    async def render(failure: Exception) -> list[str]:
        stream = ChatStream(model="m", pieces=pieces_then(failure))
        return [event async for event in chat_stream(stream, include_usage=True)]

    for failure, kind in [(model_unavailable("m", "its replica stopped"), "unavailable_error"),
                          (KeyError("a bug, with a stack"), "server_error")]:
        events_ = asyncio.run(render(failure))
        assert events_[-1] == "data: [DONE]\n\n"
        bodies = [json.loads(e[len("data: "):]) for e in events_[:-1]]
        assert [b["choices"][0]["delta"].get("content") for b in bodies[1:3]] == ["a red", " square"]
        assert set(bodies[-1]) == {"error"} and bodies[-1]["error"]["type"] == kind
        assert "Traceback" not in "".join(events_) and "KeyError" not in "".join(events_)


@pytest.fixture(scope="module")
def killable(gateway, checkpoints, tmp_path_factory) -> str:
    """An application of its own with one BLIP replica to kill mid-stream (at /streamkill)."""
    from tests.hardening_apps import _deploy, _wait_ok

    state = tmp_path_factory.mktemp("streamkill")
    args = {
        "checkpoint_dir": str(checkpoints),
        "gateway": {
            "request_timeout_s": 60,
            "cold_start_timeout_s": 90,
            "status_cache_s": 0.5,
            "images": {"allow_http": False},
            "demand_db": str(state / "demand.sqlite3"),
            "ray_actor_options": {"num_cpus": 0.05},
        },
        "models": [
            {
                "id": "test/blip-killable",
                "source": "blip",
                "family": "blip",
                "status": "live",
                "generation": {"max_new_tokens": 32, "num_beams": 1},
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "health_check_period_s": 1},
            }
        ],
    }
    _deploy("streamkill", args)
    _wait_ok(f"{gateway.url}/streamkill/health/ready")
    yield f"{gateway.url}/streamkill"
    serve.delete("streamkill")


def test_a_replica_lost_mid_stream_ends_it_with_an_error_event_and_the_model_comes_back(killable, image_url):
    from tests.hardening_apps import kill_replica

    body = chat("test/blip-killable", "", image_url, max_tokens=500)
    with httpx.Client(base_url=killable, timeout=120) as http:
        alone = http.post("/v1/chat/completions", json=body).json()
        assert alone["choices"][0]["finish_reason"] == "length", "the answer runs long enough to be cut"
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            data = []
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data.append(line[len("data: "):])
                if len(data) == 2:  # the role, then the first piece of text: kill the replica
                    kill_replica("streamkill", "blip-killable")
        assert data[-1] == "[DONE]"
        last = json.loads(data[-2])
        assert set(last) == {"error"}, last
        assert last["error"]["type"] == "unavailable_error" and last["error"]["code"] == "model_unavailable"
        assert "Traceback" not in "".join(data)
        text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-2])
        assert alone["choices"][0]["message"]["content"].startswith(text) and len(text) < len(
            alone["choices"][0]["message"]["content"]
        ), "cut before its end"
        # the next request waits for the replacement replica, as after any replica loss, and says so
        response, chunks = events(http, {**body, "stream": True})
        assert response.headers.get("x-cold-start") == "true"
        assert "".join(contents(chunks)) == alone["choices"][0]["message"]["content"]
