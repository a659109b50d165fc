"""Evaluation over location budgets, coverage and the result tables."""
import csv
import json

import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf import evaluation, geometry
from test_tnet import tiny_config


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(2)
    return tnet_tf.TNet(tiny_config())


@pytest.fixture(scope="module")
def dataset():
    images = tf.random.stateless_uniform([10, 128, 128, 3], seed=[3, 4], minval=-1, maxval=1)
    labels = tf.constant([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)


def test_coverage_of_grid_cells():
    cells = geometry.grid_boxes(3, 0.5).astype(np.float32)
    boxes = tf.constant([[cells[0], cells[0]], [cells[0], cells[1]], [cells[0], cells[8]],
                         [[0, 0, 1, 1], cells[4]]])
    # one cell: 1/4; two cells overlapping by half: 1/2 * 3/4; opposite corners: 2/4.
    np.testing.assert_allclose(evaluation.coverage(boxes).numpy(), [0.25, 0.375, 0.5, 1.0])


def test_attended_only_logits_leave_out_the_level1_context(model):
    images = tf.random.uniform([2, 128, 128, 3], -1, 1)
    outputs = model(images, locations=[2, 1])
    expected = model.classifier(tf.reduce_mean(outputs["features"][:, 1:], axis=1))
    np.testing.assert_allclose(evaluation.attended_only_logits(model, outputs).numpy(),
                               expected.numpy(), atol=1e-5)


def test_evaluate_budgets_matches_direct_predictions(model, dataset, tmp_path):
    attention = evaluation.AttentionCsv(str(tmp_path / "attention.csv"))
    rows = evaluation.evaluate_budgets(model, dataset, [[0], [1], [2, 1]],
                                       attention_writer=attention)
    attention.close()
    images = tf.concat([x for x, _ in dataset], axis=0)
    labels = tf.concat([y for _, y in dataset], axis=0).numpy()
    for row, budget in zip(rows, [[0], [1], [2, 1]]):
        outputs = model(images, locations=budget)
        predictions = np.argmax(outputs["logits"].numpy(), axis=-1)
        top5 = np.argsort(-outputs["logits"].numpy(), axis=-1)[:, :5]
        assert row["images"] == 10 and row["locations"] == budget
        assert row["top1"] == pytest.approx(100.0 * np.mean(predictions == labels))
        assert row["top5"] == pytest.approx(100.0 * np.mean([l in t for l, t in zip(labels, top5)]))
        assert row["coverage_level1"] == pytest.approx(100.0)
    assert rows[0]["attended_only_top1"] is None and "coverage_level2" not in rows[0]
    assert rows[1]["coverage_level2"] == pytest.approx(25.0)
    assert rows[2]["total_locations"] == 4
    assert 25.0 < rows[2]["coverage_level2"] <= 50.0 and rows[2]["coverage_level3"] <= 12.5
    with open(tmp_path / "attention.csv") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 10 * 1 + 10 * 4
    first = [l for l in lines if l["locations"] == "2,1" and l["image"] == "0"]
    assert [l["level"] for l in first] == ["2", "2", "3", "3"]
    assert all(0.0 < float(l["probability"]) <= 1.0 for l in lines)

    paths = evaluation.write_table(rows, str(tmp_path / "tables" / "evaluate"))
    assert json.load(open(paths["json"]))[1]["top1"] == rows[1]["top1"]
    markdown = open(paths["md"]).read().splitlines()
    assert len(markdown) == 2 + 3 and markdown[0].startswith("| locations |")
    assert len(list(csv.DictReader(open(paths["csv"])))) == 3
