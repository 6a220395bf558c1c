"""Draw a task's boxes, quads and polygons with their labels on the input image (fal.ai's `image` output)."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

PALETTE = ("#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#00c7be", "#ffcc00", "#ff2d55")


def shapes(results: Any) -> list[tuple[str, list[tuple[float, float]], str]]:
    """The drawable shapes of a structured result: (kind, points, label), kind 'box' or 'polygon'."""
    found: list[tuple[str, list[tuple[float, float]], str]] = []
    if not isinstance(results, dict):
        return found
    for box in results.get("bboxes", []):
        corners = [(box["x"], box["y"]), (box["x"] + box["w"], box["y"] + box["h"])]
        found.append(("box", corners, box.get("label", "")))
    for quad in results.get("quad_boxes", []):
        points = [(p["x"], p["y"]) for p in quad.get("points", [])]
        found.append(("polygon", points, quad.get("label", "")))
    for polygon in results.get("polygons", []):
        found.append(("polygon", [(p["x"], p["y"]) for p in polygon["points"]], polygon.get("label", "")))
    for entity in results.get("entities", []):
        for box in entity.get("bboxes", []):
            found.append(("box", [(box["x"], box["y"]), (box["x"] + box["w"], box["y"] + box["h"])], entity["phrase"]))
    return found


def annotate(image: Image.Image, results: Any) -> dict[str, Any]:
    """The image with every shape of `results` drawn on it, as a PNG data URL with its size."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 200))
    for index, (kind, points, label) in enumerate(shapes(results)):
        color = PALETTE[index % len(PALETTE)]
        if kind == "box":
            (x1, y1), (x2, y2) = points
            draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=width)
        elif len(points) >= 2:
            draw.line([*points, points[0]], fill=color, width=width)
        if label and points:
            x, y = points[0]
            left, top, right, bottom = draw.textbbox((x, y), label)
            draw.rectangle([left, top, right, bottom], fill=color)
            draw.text((x, y), label, fill="white")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"url": f"data:image/png;base64,{encoded}", "content_type": "image/png", "width": canvas.width, "height": canvas.height}
