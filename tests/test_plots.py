"""Figures are written, have the expected size and show the drawn boxes."""
import json

import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import plots
from conftest import tiny_config


def _read_png(path):
    return tf.io.decode_png(tf.io.read_file(path), channels=3).numpy()


def test_attention_figure_draws_level_coloured_boxes(tmp_path):
    model = tnet_tf.TNet(tiny_config())
    images = -tf.ones([2, 128, 128, 3])     # black images: every coloured pixel is drawing
    outputs = model(images, locations=[2, 1])
    path = plots.attention_figure(images[1].numpy(), outputs, 1, str(tmp_path / "a.png"),
                                  label=3, class_names=list("abcde"))
    pixels = _read_png(path)
    assert pixels.shape[0] >= 128 and pixels.shape[1] >= 128
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 170) & (pixels[..., 2] < 100)
    assert red.sum() > 100 and yellow.sum() > 100       # level-2 and level-3 boxes


def test_attention_grid_draws_one_panel_per_image(tmp_path):
    model = tnet_tf.TNet(tiny_config())
    images = -tf.ones([5, 128, 128, 3])
    outputs = model(images, locations=[2])
    path = plots.attention_grid(images.numpy(), outputs, [0, 1, 2, 3, 4],
                                str(tmp_path / "grid.png"), columns=3, panel_inches=2.0, dpi=50)
    pixels = _read_png(path)
    assert pixels.shape == (2 * 115, 3 * 100, 3)     # 2 rows x 3 columns, 2.3 x 2 in panels
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    thirds = [red[:, i * 100:(i + 1) * 100].sum() for i in range(3)]
    assert min(thirds) > 20                            # boxes drawn in every column
    assert red[115:, 200:].sum() == 0                  # the sixth panel is empty


def test_accuracy_vs_flops_plot(tmp_path):
    rows = [{"model": "tnet", "gflops": g, "top1": a, "total_locations": k}
            for g, a, k in [(0.39, 47.8, 0), (0.77, 70.2, 1), (1.16, 71.5, 2)]]
    rows.append({"model": "efficientnet", "gflops": 1.54, "top1": 69.8})
    (tmp_path / "r.json").write_text(json.dumps(rows))
    path = plots.accuracy_vs_flops([str(tmp_path / "r.json")], str(tmp_path / "f.png"))
    pixels = _read_png(path)
    assert pixels.shape == (480, 720, 3)
    assert (pixels.std(axis=-1) > 30).sum() > 200      # coloured lines and markers
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="no rows"):
        plots.accuracy_vs_flops([str(tmp_path / "empty.json")], str(tmp_path / "g.png"))
