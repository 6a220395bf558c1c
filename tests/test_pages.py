"""The web pages (serve/routers/pages.py) in a real headless Chromium against the session's gateway.

Debian's `chromium` and `chromium-driver` (`make browser`, part of `make test`) are driven with
Selenium. Chromium resolves no host name but 127.0.0.1, and every test checks that the page asked
for nothing but this gateway and logged no console error. Screenshots of each step are written to
tests/artifacts/pages/. The first tests need no browser: the card metadata is checked when the
configuration is read, and the pages escape it.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from PIL import Image, ImageDraw
from pydantic import ValidationError

from serve.config import ModelSpec
from tests.elastic_config import INJECTION, TEST_ONLY_MODELS, TOY_MODEL
from tests.helpers import BLIP, FLORENCE_BASE, FLORENCE_LARGE, KOSMOS, LOCAL_CONFIG, ROOT, SIGLIP, data_url

ARTIFACTS = ROOT / "tests" / "artifacts" / "pages"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SEED_MODELS = [FLORENCE_LARGE, FLORENCE_BASE, KOSMOS, SIGLIP, BLIP]
# A model that is cold and that these tests wake: one that answers a task without text or region.
COLD_CANDIDATES = {BLIP: "caption", KOSMOS: "grounded-caption", FLORENCE_BASE: "caption", SIGLIP: "image-embedding"}
COLD_START_S = 150


# ----- without a browser: the configuration and the rendered HTML -----


def seed_specs(path: Path = LOCAL_CONFIG) -> dict[str, ModelSpec]:
    args = yaml.safe_load(path.read_text())["applications"][0]["args"]
    return {m["id"]: ModelSpec.model_validate(m) for m in args["models"]}


@pytest.mark.parametrize("config", ["local.yaml", "production.yaml"])
def test_both_configs_carry_the_published_figures_with_their_sources(config):
    specs = seed_specs(LOCAL_CONFIG.parent / config)
    figures = {
        (model, row.metric, row.value)
        for model, spec in specs.items()
        for row in (spec.card.benchmarks if spec.card else [])
    }
    assert figures == {
        (FLORENCE_BASE, "CIDEr", 133.0),
        (FLORENCE_BASE, "mAP", 34.7),
        (SIGLIP, "top-1 accuracy (%)", 78.2),
        (BLIP, "CIDEr", 133.5),
    }
    for spec in specs.values():
        assert spec.card is not None and spec.card.description and spec.card.links, spec.id
        for row in spec.card.benchmarks:
            assert row.source and row.url, (spec.id, row)


@pytest.mark.parametrize(
    "card, problem",
    [
        ({"links": [{"title": "x", "url": "javascript:alert(1)"}]}, "links.0.url"),
        ({"links": [{"title": "x", "url": 'https://example.com/"onclick="x'}]}, "links.0.url"),
        (
            {"benchmarks": [{"benchmark": "b", "metric": "m", "value": 1, "source": "s", "url": "data:text/html,x"}]},
            "url",
        ),
        ({"benchmarks": [{"benchmark": "b", "metric": "m", "value": "high", "source": "s"}]}, "value"),
        ({"faq": []}, "faq"),
    ],
)
def test_card_metadata_is_checked_when_the_config_is_read(card, problem):
    entry = {"id": "x/y", "source": "x/y", "family": "blip", "card": card}
    with pytest.raises(ValidationError) as raised:
        ModelSpec.model_validate(entry)
    assert problem in str(raised.value)


def render_pages(specs: list[ModelSpec]):
    """The pages router alone, in process, over a service holding `specs` (no Ray, no Serve)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve.config import GatewayConfig
    from serve.routers import pages
    from serve.routers.common import service
    from serve.service import GatewayService

    gateway = GatewayService(GatewayConfig(), specs, None, None, None)  # the pages need no dispatcher
    app = FastAPI()
    app.include_router(pages.router)
    app.dependency_overrides[service] = lambda: gateway
    return TestClient(app)


def test_rendered_pages_escape_markup_and_forbid_outside_resources():
    from tests.elastic_config import TOY_CARD

    hostile = ModelSpec.model_validate(
        {"id": "evil/<script>x</script>", "source": "blip", "family": "blip", "license": INJECTION, "card": TOY_CARD}
    )
    client = render_pages([*seed_specs().values(), hostile])
    for path in ("/", "/models/evil/<script>x</script>", "/models/nobody-<script>y"):
        page = client.get(path)
        assert page.headers["content-type"].startswith("text/html")
        assert "<script>x" not in page.text and "<script>y" not in page.text and "<script>window" not in page.text
        assert "<img src=x" not in page.text and "<b>bold" not in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert client.get("/models/nobody-<script>y").status_code == 404
    # a model's page answers to its deployment name too
    by_name = client.get("/models/florence-2-base")
    assert by_name.status_code == 200 and "<code>microsoft/Florence-2-base</code>" in by_name.text
    # the page's data for its script is JSON inside <script type="application/json">: no `</script>` can close it
    model = client.get("/models/evil/<script>x</script>").text
    data = model.split('<script type="application/json" id="page-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["id"] == "evil/<script>x</script>"
    # external resources: none but the links a card names
    assert "http" not in "".join(line for line in model.splitlines() if "<script" in line or "<link" in line)


def test_pages_stay_out_of_the_api_schema():
    from serve.ingress import app

    paths = app.openapi()["paths"]
    assert "/" not in paths and not any(path.startswith(("/models/", "/static/")) for path in paths)


# ----- in the browser -----


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        # nothing but this machine: every other host name fails to resolve
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # A driver path given: Selenium Manager (which would download drivers) is not used.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(ARTIFACTS / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Page:
    """One test's view of the browser: navigation, waits, screenshots, and the logs checked at the end."""

    def __init__(self, driver, base: str, name: str) -> None:
        self.driver = driver
        self.base = base
        self.name = name
        self.shots = 0
        driver.get_log("browser")  # drop what earlier tests left
        driver.get_log("performance")
        self.requests: list[str] = []

    def phone(self) -> None:
        """A phone's viewport (headless Chromium's windows are never narrower than 500 px)."""
        metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                self.shot("timeout")
                raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
            time.sleep(0.05)

    def by_id(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def all(self, selector: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, element_id: str) -> str:
        return self.js("return document.getElementById(arguments[0]).textContent", element_id)

    def shot(self, step: str) -> Path:
        self.shots += 1
        path = ARTIFACTS / f"{self.name}-{self.shots:02d}-{step}.png"
        self.driver.save_screenshot(str(path))
        return path

    def check_logs(self, allowed: tuple[str, ...] = ()) -> None:
        """No console error but the `allowed` ones; no request that left this machine."""
        errors = [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
        ]
        assert not errors, f"console errors: {errors}"
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
        outside = [url for url in self.requests if not local(url)]
        assert not outside, f"requests that left 127.0.0.1: {outside}"


def local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname == "127.0.0.1"


@pytest.fixture
def page(browser, gateway, request) -> Page:
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.set_window_size(1280, 1000)
    view = Page(browser, gateway.url, request.node.name.removeprefix("test_")[:60])
    yield view
    browser.get("about:blank")


def listing(gateway) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in httpx.get(f"{gateway.url}/v1/models", timeout=30).json()["data"]}


def picture(tmp_path: Path) -> tuple[Path, bytes]:
    """A generated PNG: a few coloured shapes on white, 320 × 240."""
    image = Image.new("RGB", (320, 240), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([30, 40, 150, 150], fill="red")
    draw.ellipse([180, 60, 290, 200], fill="blue")
    draw.rectangle([100, 170, 260, 220], fill="green")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = tmp_path / "shapes.png"
    path.write_bytes(buffer.getvalue())
    return path, buffer.getvalue()


def model_path(model_id: str) -> str:
    return f"/models/{model_id}"


def upload(page: Page, path: Path) -> None:
    page.by_id("image-file").send_keys(str(path))
    page.wait(lambda: "Image ready" in page.text("run-status"), what="the image to load")


def choose_task(page: Page, task: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(page.by_id("task")).select_by_value(task)


def run_and_wait(page: Page, timeout: float = 60) -> dict[str, Any]:
    page.by_id("run").click()
    page.wait(lambda: not page.by_id("run").get_attribute("disabled"), timeout, "the run to finish")
    status = page.text("run-status")
    assert status.startswith("Done"), status
    return json.loads(page.text("result-json"))


def httpx_embedding(gateway, image: Path) -> list[float]:
    body = {"model": SIGLIP, "input": [data_url(image.read_bytes())], "modality": "image"}
    reply = httpx.post(f"{gateway.url}/v1/embeddings", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["data"][0]["embedding"]


def wait_for_state(page: Page, element_id: str = "state") -> str:
    return page.wait(lambda: page.by_id(element_id).get_attribute("data-state"), what="the live state")


def test_catalog_lists_every_model_with_its_status(page, gateway):
    api = listing(gateway)
    page.open("/")
    page.wait(lambda: all(card.get_attribute("data-state") for card in page.all('[data-field="state"]')), what="states")
    cards = {card.get_attribute("data-model"): card for card in page.all("#catalog .card")}
    assert set(cards) == set(api) and set(SEED_MODELS) <= set(cards) and TEST_ONLY_MODELS <= set(cards)
    for model_id, card in cards.items():
        status = card.find_element("css selector", '[data-field="status"]').text
        assert status == ("live" if api[model_id]["status"] == "live" else "coming soon"), model_id
        assert card.find_element("css selector", '[data-field="state"]').get_attribute("data-state") in (
            "cold",
            "starting",
            "pending",
            "ready",
            "unavailable",
        )
        assert card.find_element("css selector", '[data-field="demand"]').text.isdigit()
    page.check_logs()
    page.shot("catalog")

    # the task filter, with the keyboard: focus the first radio, arrow to "Detection"
    from selenium.webdriver.common.keys import Keys

    radio = page.all('input[name="category"]')
    values = [r.get_attribute("value") for r in radio]
    radio[0].send_keys(Keys.SPACE)
    for _ in range(values.index("detection")):
        page.driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    page.wait(lambda: page.js('return document.querySelector("input[name=category]:checked").value') == "detection")
    shown = {c.get_attribute("data-model") for c in page.all("#catalog .card") if c.is_displayed()}
    assert shown == {FLORENCE_LARGE, FLORENCE_BASE}
    assert page.text("catalog-count") == "2 models"
    page.shot("filter-detection")
    page.all('input[value="zero-shot"]')[0].click()
    shown = {c.get_attribute("data-model") for c in page.all("#catalog .card") if c.is_displayed()}
    assert shown == {SIGLIP}

    # phone width (a 390 px wide mobile viewport): nothing wider than the screen, here and on a model page
    page.phone()
    for path in ("/", model_path(FLORENCE_BASE)):
        page.open(path)
        page.wait(lambda: page.js("return document.readyState") == "complete")
        assert page.js("return [document.documentElement.scrollWidth, window.innerWidth]") == [390, 390], path
        page.shot("phone")
    page.check_logs()


def test_a_cold_model_shows_waking_up_then_its_answer(page, gateway, tmp_path):
    api = listing(gateway)
    cold = [model for model in COLD_CANDIDATES if api[model]["state"] == "cold"]
    if not cold:
        pytest.skip(
            f"every candidate model is warm after the earlier tests: {[api[m]['state'] for m in COLD_CANDIDATES]}"
        )
    model = cold[0]
    image, _ = picture(tmp_path)
    page.open(model_path(model))
    assert wait_for_state(page) == "cold"
    upload(page, image)
    choose_task(page, COLD_CANDIDATES[model])
    page.by_id("run").click()
    page.wait(lambda: page.by_id("waking").is_displayed(), 5, "the waking-up indicator")
    assert "Waking up" in page.by_id("waking").text
    page.js("document.getElementById('waking').scrollIntoView({block: 'center'})")
    page.shot("waking-up")
    page.wait(lambda: not page.by_id("run").get_attribute("disabled"), COLD_START_S, "the cold model's answer")
    assert page.text("run-status").startswith("Done"), page.text("run-status")
    assert not page.by_id("waking").is_displayed()
    assert page.by_id("cold-note").is_displayed()  # the answer came with x-cold-start: true
    assert page.text("result-json")
    page.wait(lambda: page.by_id("state").get_attribute("data-state") == "ready", 15, "the state to turn ready")
    page.js("document.getElementById('output').scrollIntoView()")
    page.shot("answered")
    page.check_logs()


def test_tell_us_you_want_it_raises_the_count(page, gateway):
    from selenium.webdriver.common.keys import Keys

    model = KOSMOS
    before = listing(gateway)[model]["demand"]
    page.open(model_path(model))
    page.wait(lambda: page.text("demand").isdigit(), what="the demand count")
    assert int(page.text("demand")) == before
    page.shot("before")
    button = page.by_id("want")
    page.js("arguments[0].focus()", button)
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)  # keyboard, not a mouse click
    page.wait(lambda: page.text("demand") == str(before + 1), 10, "the count to go up")
    assert listing(gateway)[model]["demand"] == before + 1
    assert str(before + 1) in page.text("want-status")
    page.shot("after")
    page.check_logs()


def test_object_detection_draws_every_box_the_api_returned(page, gateway, tmp_path):
    image, data = picture(tmp_path)
    api = httpx.post(
        f"{gateway.url}/v1/vision/florence-2-large/object-detection", json={"image_url": data_url(data)}, timeout=60
    )
    assert api.status_code == 200, api.text
    expected = len(api.json()["results"]["bboxes"])
    assert expected > 0  # the tiny Florence-2 always answers with boxes
    page.open(model_path(FLORENCE_LARGE))
    upload(page, image)
    choose_task(page, "object-detection")
    answer = run_and_wait(page)
    assert len(answer["results"]["bboxes"]) == expected
    drawn = page.all('#overlay g[data-kind="box"] rect.box')
    assert len(drawn) == expected and page.by_id("overlay").is_displayed()
    first = answer["results"]["bboxes"][0]
    assert float(drawn[0].get_attribute("x")) == pytest.approx(first["x"])
    assert float(drawn[0].get_attribute("width")) == pytest.approx(first["w"])
    assert page.text("latency").endswith(" ms")
    page.js("document.getElementById('playground').scrollIntoView()")
    page.shot("boxes")
    page.check_logs()


def test_a_region_task_sends_the_dragged_region(page, gateway, tmp_path):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    image, _ = picture(tmp_path)
    page.open(model_path(FLORENCE_LARGE))
    upload(page, image)
    choose_task(page, "region-to-description")
    assert page.by_id("region-field").is_displayed() and not page.by_id("text-field").is_displayed()
    overlay = page.by_id("overlay")
    page.js("arguments[0].scrollIntoView({block: 'center'})", overlay)
    left, top, width = page.js(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width]", overlay
    )
    scale = 320 / width  # image pixels per CSS pixel
    # from (40, 30) to (200, 150) CSS pixels inside the overlay, through a point between
    (x0, y0), (x1, y1) = (round(left + 40), round(top + 30)), (round(left + 200), round(top + 150))
    drag = ActionBuilder(page.driver)
    drag.pointer_action.move_to_location(x0, y0).pointer_down()
    drag.pointer_action.move_to_location((x0 + x1) // 2, (y0 + y1) // 2)
    drag.pointer_action.move_to_location(x1, y1).pointer_up()
    drag.perform()
    expected = [(x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale, (y1 - top) * scale]
    typed = [float(page.by_id(f"region-{k}").get_attribute("value")) for k in ("x1", "y1", "x2", "y2")]
    assert typed == pytest.approx(expected, abs=2)
    assert page.all("#overlay rect.region")
    page.shot("region-dragged")
    answer = run_and_wait(page)
    sent = json.loads(page.text("request-json").split("\n", 1)[1])
    assert [sent["region"][k] for k in ("x1", "y1", "x2", "y2")] == typed
    assert isinstance(answer["results"], str)
    page.shot("region-answer")
    page.check_logs()


def test_siglip_classification_shows_one_bar_per_label(page, gateway, tmp_path):
    image, _ = picture(tmp_path)
    labels = ["a red square", "a blue circle", '<img src=x onerror="window.__pwned = 1">', "a <b>bold</b> cat"]
    page.open(model_path(SIGLIP))
    upload(page, image)
    choose_task(page, "zero-shot-classification")
    field = page.by_id("text-input")
    field.clear()
    field.send_keys("\n".join(labels))
    answer = run_and_wait(page, COLD_START_S)
    rows = page.all("#result-view .bar-row")
    assert len(rows) == len(labels) == len(answer["data"])
    shown = [row.find_element("css selector", ".bar-label").text for row in rows]
    assert sorted(shown) == sorted(labels) and shown == [row["label"] for row in answer["data"]]
    for row, result in zip(rows, answer["data"]):
        width = page.js("return arguments[0].querySelector('.bar').style.width", row)
        assert float(width.rstrip("%")) == pytest.approx(result["score"] * 100, abs=0.01)
    assert (
        page.js("return document.querySelectorAll('#result-view img, #result-view b, #result-view script').length") == 0
    )
    assert page.js("return window.__pwned === undefined")
    page.js("document.getElementById('output').scrollIntoView()")
    page.shot("bars")

    choose_task(page, "image-embedding")
    answer = run_and_wait(page)
    shown = page.js("return document.querySelector('#result-view .dims').textContent")
    assert int(shown) == len(httpx_embedding(gateway, image)) > 0
    assert float(page.all("#result-view .norm")[0].text) == pytest.approx(1.0, abs=1e-3)
    page.js("document.getElementById('output').scrollIntoView()")
    page.shot("embedding")
    page.check_logs()


def test_an_unknown_model_is_a_404_page(page, gateway):
    missing = "no-such/<script>window.__pwned = 1</script>"
    reply = httpx.get(f"{gateway.url}/models/{missing}", timeout=30)
    assert reply.status_code == 404 and reply.headers["content-type"].startswith("text/html")
    page.open(f"/models/{missing}")
    page.wait(lambda: page.all("#not-found"), what="the 404 page")
    assert page.all("h1")[0].text == "Model not found"
    assert page.all("#not-found code")[0].text == missing
    assert page.js("return window.__pwned === undefined && document.querySelectorAll('main script').length === 0")
    page.shot("not-found")
    page.check_logs(allowed=("404 (Not Found)",))


def test_model_metadata_is_shown_as_text(page, gateway):
    page.open(model_path(TOY_MODEL))
    page.wait(lambda: page.all("#description"), what="the toy model's page")
    assert page.text("description") == f"Mean colour. {INJECTION}"
    assert INJECTION in page.by_id("specs").text and INJECTION in page.by_id("benchmarks").text
    assert (
        page.js(
            "return document.querySelectorAll('main b, main i, main u, main img:not(#preview), main script').length"
        )
        == 0
    )
    assert page.js("return window.__pwned === undefined")
    page.shot("toy-card")
    page.open("/")
    page.wait(lambda: page.all(f'[data-model="{TOY_MODEL}"]'), what="the catalog")
    assert page.js("return window.__pwned === undefined && document.querySelectorAll('main img').length === 0")
    page.check_logs()


def test_an_api_key_stays_in_the_tab_and_goes_with_every_api_call(page, gateway):
    """With keys on, the page asks for one (the session's gateway has them off: the form is shown by hand)."""
    from selenium.webdriver.common.keys import Keys

    key = "sk-test-0123456789abcdef"
    page.open(model_path(FLORENCE_LARGE))
    wait_for_state(page)
    page.js("document.getElementById('key-form').hidden = false")
    field = page.by_id("api-key")
    assert field.get_attribute("type") == "password"
    field.send_keys(key, Keys.ENTER)
    page.wait(lambda: page.text("key-status") == "key set for this tab")
    assert page.js("return sessionStorage.getItem('gigarouter.apiKey')") == key
    assert page.js("return localStorage.length === 0 && document.cookie === ''")
    assert page.by_id("api-key").get_attribute("value") == ""  # not left in the field either
    calls = page.wait(lambda: authorized_calls(page), 10, "an API call with the key")
    assert set(calls) == {f"Bearer {key}"}
    page.by_id("forget-key").click()
    assert page.js("return sessionStorage.getItem('gigarouter.apiKey')") is None
    page.check_logs()


def authorized_calls(page: Page) -> list[str]:
    """The Authorization headers of the API calls the page made since the last look."""
    found = []
    for entry in page.driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            page.requests.append(request["url"])
            headers = {name.lower(): value for name, value in request["headers"].items()}
            if "/v1/" in request["url"] and "authorization" in headers:
                found.append(headers["authorization"])
    return found


def test_kosmos_entities_are_highlighted_in_the_caption_and_boxed(page, gateway, tmp_path):
    image, _ = picture(tmp_path)
    page.open(model_path(KOSMOS))
    upload(page, image)
    choose_task(page, "grounded-caption")
    answer = run_and_wait(page, COLD_START_S)["results"]
    assert page.text("answer") == answer["text"]
    assert len(page.all('#overlay g[data-kind="entity"]')) == sum(len(e["bboxes"]) for e in answer["entities"])

    # The tiny Kosmos-2 rarely names entities: the page is fed a real-shaped answer that does,
    # with markup in its phrases, by replacing fetch for the task endpoint.
    text = "An image of <b>a red</b> square beside a circle"
    red, circle = text.index("<b>a red</b> square"), text.index("a circle")
    entities = [
        {
            "phrase": "<b>a red</b> square",
            "span": [red, red + 19],
            "boxes": [{"x1": 0.1, "y1": 0.17, "x2": 0.47, "y2": 0.63}],
            "bboxes": [{"x": 30, "y": 40, "w": 120, "h": 110, "label": "<b>a red</b> square"}],
        },
        {
            "phrase": "a circle",
            "span": [circle, circle + 8],
            "boxes": [],
            "bboxes": [
                {"x": 180, "y": 60, "w": 110, "h": 140, "label": "a circle"},
                {"x": 185, "y": 65, "w": 100, "h": 130, "label": "a circle"},
            ],
        },
    ]
    fake = {"results": {"text": text, "answer": text, "entities": entities}}
    page.js(
        """const body = arguments[0], real = window.fetch;
        window.fetch = (url, init) => String(url).includes('/v1/vision/')
          ? Promise.resolve(new Response(JSON.stringify(body), {headers: {'content-type': 'application/json'}}))
          : real(url, init);""",
        fake,
    )
    run_and_wait(page)
    marks = page.all("#answer mark")
    assert [m.text for m in marks] == ["<b>a red</b> square", "a circle"]
    assert [m.get_attribute("data-entity") for m in marks] == ["0", "1"]
    assert page.text("answer") == text
    boxes = page.all('#overlay g[data-kind="entity"] rect.box')
    assert len(boxes) == 3
    colours = [box.get_attribute("stroke") for box in boxes]  # one colour per entity
    assert colours[0] != colours[1] == colours[2]
    assert page.js("return document.querySelectorAll('#result-view b, #overlay b').length") == 0
    page.js("document.getElementById('playground').scrollIntoView()")
    page.shot("entities")
    page.check_logs()


def test_with_auth_on_the_pages_need_no_key_but_the_api_does(guarded):
    """The guarded gateway has keys on: its pages open without one (they hold only public catalog
    config), its API does not (the playground sends the user's key)."""
    for path in ("/", "/models/google/siglip2-base-patch16-naflex", "/static/style.css"):
        response = httpx.get(f"{guarded.url}{path}", timeout=30)
        assert response.status_code == 200, (path, response.text[:200])
    assert httpx.get(f"{guarded.url}/v1/models", timeout=30).status_code == 401
