"""`latest.png`: throughput and latency against concurrency for every real-size workload, and the photo
phase's throughput and latency per model, from a run's summary (`benchmarks.report.summarize`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import LABELS


def plot(summary: dict[str, Any], path: Path) -> None:
    """Throughput and p50/p99 latency against concurrency, one line per system, one row per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [key for key in summary if isinstance(summary[key], dict) and "by_concurrency" in summary[key]]
    photo = summary.get("photo")
    photo_rows = isinstance(photo, dict) and "summary" in photo and bool(photo["summary"]["models"])
    rows = len(workloads) + (1 if photo_rows else 0)
    figure, axes = plt.subplots(max(rows, 1), 2, figsize=(12, 4.2 * max(rows, 1)), squeeze=False)
    if rows == 0:
        axes[0][0].text(0.5, 0.5, "nothing measured (see latest.md)", ha="center", va="center")
    if photo_rows:
        _plot_photo(axes[len(workloads)], photo)
    colors = {"gateway": "C0", "gateway_unbatched": "C1", "naive": "C2", "litserve": "C3", "raw": "black"}
    for row, key in zip(axes, workloads):
        block = summary[key]
        throughput_axis, latency_axis = row
        for system, points in block["by_concurrency"].items():
            for axis, field, style, label in (
                (throughput_axis, "items_per_s", "o-", LABELS[system]),
                (latency_axis, "p50_ms", "o-", LABELS[system]),
                (latency_axis, "p99_ms", "x--", None),
            ):
                known = [(int(c), point[field]) for c, point in points.items() if point[field]]
                if known:
                    xs, ys = zip(*known)
                    axis.plot(xs, ys, style, color=colors[system], label=label, alpha=1.0 if label else 0.6)
        if block["raw_items_per_s"]:
            throughput_axis.axhline(
                block["raw_items_per_s"],
                color=colors["raw"],
                linestyle=":",
                label=f"{LABELS['raw']}, batch {block['batch_size']}",
            )
        throughput_axis.set(
            title=f"{key}: throughput", xlabel="concurrency", ylabel="items/s", xscale="log", ylim=(0, None)
        )
        latency_axis.set(
            title=f"{key}: latency (p50 solid, p99 dashed)", xlabel="concurrency", ylabel="ms", xscale="log"
        )
        if latency_axis.lines:
            latency_axis.set_yscale("log")
        for axis in row:
            concurrencies = sorted({int(c) for points in block["by_concurrency"].values() for c in points})
            axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
            axis.minorticks_off()
            axis.grid(True, alpha=0.3)
        throughput_axis.legend(fontsize=7)
        latency_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_photo(row: Any, photo: dict[str, Any]) -> None:
    """The photo phase: images/s at concurrency 8 and p50 at concurrency 1, per model and system (medians,
    range as error bars)."""
    from benchmarks.photo_figures import LABELS as PHOTO_LABELS

    models = photo["summary"]["models"]
    systems = list(next(iter(models.values()))["systems"])
    colors = {"raw": "black", "gateway": "C0", "naive": "C2", "litserve": "C3"}
    width = 0.8 / len(systems)
    for axis, field, title, unit in (
        (row[0], "c8_images_per_s", "photo: throughput at concurrency 8", "images/s"),
        (row[1], "c1_p50_ms", "photo: latency p50 at concurrency 1", "ms"),
    ):
        for index, system in enumerate(systems):
            xs, ys, low, high = [], [], [], []
            for position, block in enumerate(models.values()):
                value = block["systems"][system][field]
                if value["median"] is None:
                    continue
                xs.append(position + (index - (len(systems) - 1) / 2) * width)
                ys.append(value["median"])
                low.append(value["median"] - value["min"])
                high.append(value["max"] - value["median"])
            axis.bar(xs, ys, width, yerr=[low, high], color=colors.get(system), label=PHOTO_LABELS[system], capsize=3)
        axis.set_xticks(range(len(models)), [f"{model} (12 MP JPEG)" for model in models])
        axis.set(title=title + (" (QUICK RUN)" if photo["header"].get("quick") else ""), ylabel=unit)
        axis.grid(True, axis="y", alpha=0.3)
        axis.legend(fontsize=7)
