"""The web pages: the catalog (`/`), one page per model (`/models/{id}`) with its playground, and their files.

HTML only. What a page shows comes from `GatewayService.catalog_entries()` (the configuration: nothing
here asks Serve or needs an API key); live state, replicas and demand are read by the page's script
from the public API (`GET /v1/models`), and the playground calls the public API too, with the
caller's key when keys are on. Templates are Jinja2 with autoescaping on; the scripts build the DOM
with `textContent` only. No external fonts, scripts or styles: `Content-Security-Policy` says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from families.base import ENDPOINT_PATHS
from serve.errors import APIError
from serve.proxy_errors import PAGE_HEADER
from serve.routers.common import service
from serve.service import CATEGORIES, CatalogEntry, GatewayService

WEB = Path(__file__).resolve().parent.parent / "web"

# Paths of the pages and their files: they hold the configuration's public catalog only, so an auth
# middleware may leave them open (the API calls they make carry the caller's key).

# Images may come from anywhere the user points the playground at (their own URL); everything else
# from this gateway only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    PAGE_HEADER: "1",  # Serve's proxy passes an HTML error page (the 404 of an unknown model) as it is
}
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Read once: a fixed set of small files, never a path built from the request.
STATIC = {
    path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
    for path in sorted((WEB / "static").iterdir())
    if path.suffix in STATIC_TYPES
}

CATEGORY_LABELS = {
    "captioning": "Captioning",
    "detection": "Detection",
    "ocr": "OCR",
    "segmentation": "Segmentation",
    "grounding": "Grounding",
    "embeddings": "Embeddings",
    "zero-shot": "Zero-shot",
    "other": "Other",
}

templates = Environment(
    loader=FileSystemLoader(WEB / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

router = APIRouter(include_in_schema=False)


def html(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = templates.get_template(name).render(root=root, labels=CATEGORY_LABELS, **context)
    return HTMLResponse(page, status_code=status, headers=PAGE_HEADERS)


def parameters_text(count: int | None) -> str:
    if count is None:
        return "not published"
    if count >= 1_000_000_000:
        return f"{count / 1e9:.2f} B"
    return f"{count / 1e6:.1f} M"


def price_text(price: float | None) -> str:
    return "not set yet" if price is None else f"${price:g} / 1k images"


def card_view(entry: CatalogEntry) -> dict[str, Any]:
    """What the templates show of a model (and what its page's script needs, as JSON)."""
    spec = entry.spec
    return {
        "id": spec.id,
        "name": spec.id.rsplit("/", 1)[-1],
        "deployment": spec.deployment_name,
        "family": spec.family,
        "status": spec.status,
        "license": spec.license or "not stated",
        "parameters": parameters_text(spec.parameters),
        "price": price_text(spec.price_per_1k_images),
        "categories": entry.categories,
        "tasks": [
            {"name": t.name, "input": t.input, "endpoint": t.endpoint, "category": t.category} for t in entry.tasks
        ],
        "card": spec.card,
    }


def examples(view: dict[str, Any], base: str, keys: bool) -> list[dict[str, str]]:
    """Ready-to-copy calls for this model: curl against its first task, and the `openai` SDK."""
    auth = ' -H "Authorization: Bearer $GIGAROUTER_API_KEY"' if keys else ""
    sdk_key = 'os.environ["GIGAROUTER_API_KEY"]' if keys else '"unused-locally"'
    image = 'IMG="https://example.com/picture.jpg"   # or a data:image/...;base64,... URL'
    sdk_head = ("import os\n" if keys else "") + "from openai import OpenAI\n\n" + image.replace("=", " = ", 1) + "\n"
    model = view["id"]
    endpoints = {task["endpoint"] for task in view["tasks"]}
    found: list[dict[str, str]] = []
    chat_tasks = [t for t in view["tasks"] if t["endpoint"] == "chat"]
    if chat_tasks:
        task = chat_tasks[0]
        body = {"image_url": "$IMG"}
        if task["input"] == "text":
            body["text_input"] = "a red square"
        elif task["input"] == "region":
            body["region"] = {"x1": 8, "y1": 6, "x2": 40, "y2": 30}
        payload = json.dumps(body).replace('"$IMG"', '"\'"$IMG"\'"')
        found.append(
            {
                "title": f"curl: {task['name']}",
                "code": f"{image}\ncurl -s {base}/v1/vision/{view['deployment']}/{task['name']}{auth} \\\n"
                f"  -H 'content-type: application/json' -d '{payload}'",
            }
        )
        found.append(
            {
                "title": "openai SDK: chat",
                "code": sdk_head + f'client = OpenAI(base_url="{base}/v1", api_key={sdk_key})\n'
                "reply = client.chat.completions.create(\n"
                f'    model="{model}",\n'
                '    messages=[{"role": "user", "content": [\n'
                '        {"type": "image_url", "image_url": {"url": IMG}}]}],\n'
                ")\n"
                "print(reply.choices[0].message.content)\n"
                'print(reply.model_extra["vision"])   # structured results: boxes, polygons, entities',
            }
        )
    if "classifications" in endpoints:
        payload = json.dumps({"model": model, "image": "$IMG", "labels": ["a cat", "a dog"]})
        payload = payload.replace('"$IMG"', '"\'"$IMG"\'"')
        found.append(
            {
                "title": "curl: zero-shot classification",
                "code": f"{image}\ncurl -s {base}{ENDPOINT_PATHS['classifications']}{auth} \\\n"
                f"  -H 'content-type: application/json' -d '{payload}'",
            }
        )
    if "embeddings" in endpoints:
        found.append(
            {
                "title": "openai SDK: embeddings",
                "code": sdk_head + f'client = OpenAI(base_url="{base}/v1", api_key={sdk_key})\n'
                f'texts = client.embeddings.create(model="{model}", input=["a cat", "a dog"])\n'
                f'images = client.embeddings.create(model="{model}", input=[IMG],\n'
                '                                   extra_body={"modality": "image"})\n'
                "print(len(images.data[0].embedding))",
            }
        )
    return found


@router.get("/", response_class=HTMLResponse)
async def catalog(request: Request, gateway: GatewayService = Depends(service)) -> HTMLResponse:
    views = [card_view(entry) for entry in gateway.catalog_entries()]
    served = [c for c in CATEGORIES if any(c in view["categories"] for view in views)]
    page = {"keys": gateway.keys_required, "models": [v["id"] for v in views]}
    return html("catalog.html", request, models=views, categories=served, page=page, keys=gateway.keys_required)


@router.get("/models/{model_id:path}", response_class=HTMLResponse)
async def model_page(model_id: str, request: Request, gateway: GatewayService = Depends(service)) -> HTMLResponse:
    try:
        entry = gateway.catalog_entry(model_id)
    except APIError as error:
        if error.status != 404:
            raise
        keys = gateway.keys_required
        return html("not_found.html", request, status=404, model_id=model_id, page={"keys": keys}, keys=keys)
    view = card_view(entry)
    base = str(request.base_url).rstrip("/")
    page = {
        "keys": gateway.keys_required,
        "id": view["id"],
        "deployment": view["deployment"],
        "status": view["status"],
        "tasks": view["tasks"],
    }
    return html(
        "model.html",
        request,
        model=view,
        examples=examples(view, base, gateway.keys_required),
        page=page,
        keys=gateway.keys_required,
    )


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    found = STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"cache-control": "public, max-age=300"})
