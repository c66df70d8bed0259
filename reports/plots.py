"""Pareto plot and per-class IoU heat map (PNG), from the rows of `reports.tables`.

matplotlib is imported lazily, with the non-interactive Agg backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.io import atomic_path

from reports.tables import INT8_VARIANTS, MIXED, VARIANT_TITLES, Row, accuracy, accuracy_name, nothing_quantized

COLOURS = {"fp32": "tab:blue", "qat": "tab:green", "static": "tab:orange", MIXED: "tab:purple",
           "dynamic": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, target: Path) -> Path:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return target


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower or equal latency and higher or equal accuracy)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((lat, acc))
            best = acc
    return front


def pareto(rows: list[Row], backend: str, dataset: str, target: Path) -> Path:
    plt = _pyplot()
    acc_key, acc_title = accuracy_name(c for r in rows for c in r.cells.values() if c)
    fig, ax = plt.subplots(figsize=(7, 5))
    points = []
    for variant in ("fp32",) + INT8_VARIANTS:
        xs, ys, sizes, labels = [], [], [], []
        for row in rows:
            rec = row.ok(variant)
            lat = ((rec or {}).get("latency_ms") or {}).get("median")
            acc = accuracy(rec, acc_key)
            if rec is None or lat is None or acc is None:
                continue
            xs.append(float(lat))
            ys.append(100 * acc)
            sizes.append(20 + 15 * float(rec.get("size_mb") or 0))
            labels.append(row.label)
        if xs:
            ax.scatter(xs, ys, s=sizes, c=COLOURS[variant], alpha=0.7, edgecolors="black",
                       label=VARIANT_TITLES[variant])
            for x, y, name in zip(xs, ys, labels):
                ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            points += list(zip(xs, ys))
    if points:
        front = pareto_front(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        ax.legend(fontsize=8, title="marker size ~ model size (MB)", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no ok records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("model-only latency, median (ms)")
    ax.set_ylabel(acc_title)
    ax.set_title(f"{dataset}: accuracy vs latency on {backend}")
    ax.grid(True, alpha=0.3)
    return _save(fig, target)


def best_int8(row: Row, acc_key: str = "miou") -> dict[str, Any] | None:
    """The ok INT8 record (qat, static or dynamic) with the highest accuracy; a variant that
    quantized nothing (PyTorch dynamic on a conv network) is float, so it is never the best INT8."""
    candidates = [row.ok(v) for v in INT8_VARIANTS]
    candidates = [c for c in candidates
                  if c is not None and accuracy(c, acc_key) is not None and not nothing_quantized(c)]
    return max(candidates, key=lambda c: accuracy(c, acc_key)) if candidates else None


def per_class_iou(rows: list[Row], backend: str, dataset: str, target: Path) -> Path:
    """Heat map of per-class IoU (segmentation) or per-class AP50-95 (detection records), FP32 and
    the best INT8 variant; detection columns are the classes with ground truth in the split."""
    plt = _pyplot()
    import numpy as np

    acc_key, _ = accuracy_name(c for r in rows for c in r.cells.values() if c)
    detection = acc_key != "miou"
    field, what = ("per_class_ap", "AP") if detection else ("per_class_iou", "IoU")
    labels, values, classes = [], [], []
    for row in rows:
        for title, rec in (("FP32", row.ok("fp32")), ("best INT8", best_int8(row, acc_key))):
            per_class = ((rec or {}).get("metrics") or {}).get(field) or {}
            if not per_class:
                continue
            for c, v in per_class.items():
                if c not in classes and not (detection and v is None):
                    classes.append(c)
            name = title if title == "FP32" else f"best INT8 ({rec.get('variant')})"
            labels.append(f"{row.label}: {name}")
            values.append(per_class)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) + 3), max(3, 0.45 * len(labels) + 2)))
    if values:
        grid = np.array([[np.nan if v.get(c) is None else 100 * float(v[c]) for c in classes] for v in values])
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 50 else "black")
        fig.colorbar(im, ax=ax, label=f"{what} (%)")
    else:
        ax.text(0.5, 0.5, f"no ok records with per-class {what}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{dataset}: per-class {what} on {backend} (FP32 and best INT8)")
    return _save(fig, target)
