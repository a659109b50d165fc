"""Figures: attention policies drawn on images (the paper's Figures 3, 5, 6)
and accuracy against GFLOPs (Figures 1b and 2)."""
from __future__ import annotations

import json
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LEVEL_COLOURS = {2: "#ff3b30", 3: "#ffcc00", 4: "#34c759"}   # deeper levels: blue
MIN_FIGURE_PIXELS = 400


def attention_figure(image: np.ndarray, outputs: Dict, index: int, path: str,
                     label: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
                     dpi: int = 100) -> str:
    """Draws the boxes attended for image `index` of a batch of TNet outputs.

    image: [H, W, 3] in [-1, 1]. Boxes are coloured by level and annotated
    with their location probability (and feature weight where the model
    learns weights); the title gives the true and predicted labels.
    """
    height, width = image.shape[:2]
    scale = max(1.0, MIN_FIGURE_PIXELS / max(height, width))
    figure, axis = plt.subplots(figsize=(width * scale / dpi, height * scale / dpi + 0.4),
                                dpi=dpi)
    draw_attention(axis, image, outputs, index, label, class_names)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def attention_grid(images: np.ndarray, outputs: Dict, labels: Optional[Sequence[int]],
                   path: str, columns: int = 4, class_names: Optional[Sequence[str]] = None,
                   panel_inches: float = 3.0, dpi: int = 100) -> str:
    """`attention_figure` for every image of a batch, as one grid figure."""
    count = len(images)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * panel_inches,
                                                        rows * (panel_inches + 0.3)),
                                dpi=dpi, squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index < count:
            draw_attention(axis, images[index], outputs, index,
                           None if labels is None else int(labels[index]), class_names)
        else:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def draw_attention(axis, image: np.ndarray, outputs: Dict, index: int,
                   label: Optional[int] = None,
                   class_names: Optional[Sequence[str]] = None) -> None:
    """Draws image `index` of a batch of TNet (or MGNet) outputs and its
    attended boxes on `axis`. MGNet's glimpses 2..T are labelled with their
    step and scale a_s, in the colours of levels 2, 3, 4, ..."""
    height, width = image.shape[:2]
    boxes = np.concatenate([np.asarray(b)[index] for b in outputs["boxes"]], axis=0)
    if "regions" in outputs:                                     # MGNet
        scales = np.asarray(outputs["regions"])[index, :, 0]
        levels = np.arange(1, len(boxes) + 1)
        labels = [f"t{t + 1} s={scales[t]:.2f}" for t in range(len(boxes))]
        weights = np.ones(len(boxes))
    else:
        levels = np.asarray(outputs["feature_levels"])
        probabilities = np.exp(np.asarray(outputs["location_log_probs"])[index])
        weights = np.asarray(outputs["feature_weights"])[index]
        labels = [""] + [f"L{levels[f]} p={probabilities[f - 1]:.2f}"
                         for f in range(1, len(levels))]
    learned_weights = not np.allclose(weights, weights[0])
    prediction = int(np.argmax(np.asarray(outputs["logits"])[index]))
    axis.imshow(np.clip((image + 1.0) / 2.0, 0.0, 1.0))
    for feature in range(1, len(levels)):
        y1, x1, y2, x2 = boxes[feature] * [height, width, height, width]
        colour = LEVEL_COLOURS.get(int(levels[feature]), "#0a84ff")
        axis.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=2,
                                     edgecolor=colour))
        text = labels[feature] + (f" w={weights[feature]:.2f}" if learned_weights else "")
        axis.text(x1 + 2, y1 + 2, text, color=colour, fontsize=7, va="top",
                  bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    name = (lambda k: class_names[k] if class_names is not None else str(k))
    title = f"predicted: {name(prediction)}"
    if label is not None:
        title = f"true: {name(int(label))}   " + title
    if learned_weights:
        title += f"   level-1 weight {weights[0]:.2f}"
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def accuracy_vs_flops(result_files: Sequence[str], path: str, metric: str = "top1") -> str:
    """Plots `metric` against GFLOPs for every evaluated model and budget.

    Each JSON file holds a list of rows with `gflops` and `metric`, and
    optionally `model` and `total_locations`; rows of one model are joined
    by a line, in the style of the paper's Figure 2.
    """
    series: Dict[str, list] = {}
    for file_name in result_files:
        with open(file_name) as handle:
            for row in json.load(handle):
                if row.get("gflops") is None or row.get(metric) is None:
                    continue
                series.setdefault(str(row.get("model", file_name)), []).append(row)
    if not series:
        raise ValueError(f"no rows with gflops and {metric} in {', '.join(result_files)}")
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for name, rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r["gflops"])
        x = [r["gflops"] for r in rows]
        y = [r[metric] for r in rows]
        axis.plot(x, y, marker="o", label=name)
        for row in rows:
            count = row.get("total_locations", row.get("glimpses"))   # MGNet: glimpses
            if count is not None:
                axis.annotate(str(count), (row["gflops"], row[metric]),
                              textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("GFLOPs per image (eq. 11)")
    axis.set_ylabel("accuracy (%)" if metric == "accuracy" else f"{metric} accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
