"""Evaluation over location budgets, coverage and the result tables."""
import csv
import json

import numpy as np
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf.data.pipeline import NO_BOX
from tnet_tf import evaluation, geometry, tables
from conftest import tiny_config


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

    paths = tables.write_table(rows, str(tmp_path / "tables" / "evaluate"))
    assert json.load(open(paths["json"]))[1]["top1"] == rows[1]["top1"]
    markdown = open(paths["md"]).read().splitlines()
    assert len(markdown) == 2 + 3 and markdown[0].startswith("| locations |")
    assert len(list(csv.DictReader(open(paths["csv"])))) == 3


def test_contains_needs_the_whole_object_box_inside():
    boxes = tf.constant([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75], [0.1, 0.0, 0.5, 0.5]]])
    inside = evaluation.contains(boxes, tf.constant([[0.1, 0.3, 0.2, 0.5]]))
    # in the first box (edges touching), not in the second (x1 0.3 > 0.25 but y1 0.1 < 0.25),
    # in the third (y1 equal)
    np.testing.assert_array_equal(inside.numpy(), [[True, False, True]])


def test_contains_with_several_object_boxes_needs_one_of_them_inside():
    boxes = tf.constant([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]])
    objects = tf.constant([[[0.1, 0.1, 0.2, 0.2], [0.6, 0.7, 0.8, 0.9], list(NO_BOX)]])
    np.testing.assert_array_equal(evaluation.contains(boxes, objects).numpy(),
                                  [[True, True, False]])
    # The padding alone is held by no box, not even the whole image.
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    assert not evaluation.contains(whole, tf.constant([[list(NO_BOX)]])).numpy().any()
    # Chance with two objects: cells holding either (object 0: cell 0; object 1: cells 4, 5,
    # 7, 8 hold [.6, .6, .7, .7]).
    cells = geometry.grid_boxes(3, 0.5).astype(np.float32)
    two = tf.constant([[[0.0, 0.0, 0.2, 0.2], [0.6, 0.6, 0.7, 0.7]]])
    outputs = {"boxes": [tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), tf.constant(cells[None, [0, 1]])]}
    hits, chance = (r.numpy() for r in evaluation.hit_rates(outputs, two, cells)[2])
    np.testing.assert_allclose(hits, [0.5])
    np.testing.assert_allclose(chance, [5 / 9])


def test_hit_rates_and_their_chance_values_by_hand():
    cells = geometry.grid_boxes(3, 0.5).astype(np.float32)    # offsets 0, 0.25, 0.5
    # Image 0: object in the top-left 0.2 x 0.2 corner: only cell 0 holds it.
    # Image 1: object at [0.3, 0.3, 0.45, 0.45]: cells 0, 1, 3 and 4 hold it.
    objects = tf.constant([[0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.45, 0.45]])
    level2 = tf.constant(cells[[[0, 8], [4, 2]]])                           # [2, 2, 4]
    level3 = geometry.compose_boxes(level2, cells[[0, 0]][None])            # cell 0 of each
    outputs = {"boxes": [tf.constant([[[0.0, 0.0, 1.0, 1.0]]] * 2), level2, level3]}
    rates = evaluation.hit_rates(outputs, objects, cells)
    hits2, chance2 = (r.numpy() for r in rates[2])
    np.testing.assert_allclose(hits2, [0.5, 0.5])     # cell 0 yes, 8 no; cell 4 yes, 2 no
    np.testing.assert_allclose(chance2, [1 / 9, 4 / 9])
    # Level 3 inside cell 0 [0, 0, .5, .5]: its cell 0 is [0, 0, .25, .25] and holds object 0;
    # of its 9 sub-cells (side .25 at offsets 0, .125, .25) those holding [0, 0, .2, .2]: 1.
    # Inside cell 8 nothing holds object 0. Image 1: cell 4 = [.25, .25, .75, .75], its
    # cell 0 = [.25, .25, .5, .5] holds [.3, .3, .45, .45]; of its sub-cells (offsets .25,
    # .375, .5) only the one at (.25, .25) starts early enough. Cell 2 = [0, .5, .5, 1]: none.
    hits3, chance3 = (r.numpy() for r in rates[3])
    np.testing.assert_allclose(hits3, [0.5, 0.5])
    np.testing.assert_allclose(chance3, [(1 / 9 + 0) / 2, (1 / 9 + 0) / 2], rtol=1e-6)


def test_evaluate_budgets_reports_hit_rates_with_object_boxes(model, dataset):
    objects = tf.tile(tf.constant([[0.6, 0.6, 0.7, 0.7]]), [10, 1])
    with_boxes = tf.data.Dataset.zip((dataset.unbatch(), tf.data.Dataset.from_tensor_slices(
        objects))).map(lambda pair, box: (pair[0], pair[1], box)).batch(4)
    rows = evaluation.evaluate_budgets(model, with_boxes, [[0], [2, 1]])
    assert not any(k.startswith("hit_rate") for k in rows[0])
    images = tf.concat([x for x, _ in dataset], axis=0)
    outputs = model(images, locations=[2, 1])
    expected = evaluation.hit_rates(outputs, objects, model.cell_boxes)
    for level in (2, 3):
        assert rows[1][f"hit_rate_l{level}"] == pytest.approx(
            100.0 * float(tf.reduce_mean(expected[level][0])), abs=1e-4)
        assert rows[1][f"hit_rate_l{level}_chance"] == pytest.approx(
            100.0 * float(tf.reduce_mean(expected[level][1])), abs=1e-4)
    # [.6, .6, .7, .7] lies in cells 4, 5, 7, 8 of the 3x3 grid of halves: chance 4/9.
    assert rows[1]["hit_rate_l2_chance"] == pytest.approx(400 / 9, abs=1e-3)
