"""`python -m experiments.profile`: flag validation, rows, table and JSON."""
import json

import pytest
import tensorflow as tf
from absl import flags

from experiments import profile
from tnet_tf import profiling

KEYS = ("model", "input_size", "locations", "params", "flops", "flops_profiler",
        "ms_per_image", "ms_per_image_std", "peak_memory_bytes", "memory_method")


def _run_main(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["profile", *argv])
    try:
        profile.main(["profile"])
    finally:
        flags.FLAGS.unparse_flags()


class _StandIn(tf.keras.Model):
    """A conv + dense net of known cost; a location budget of k glimpses in total
    processes the image 1 + k times, as TNet's extra glimpses would."""

    def __init__(self):
        super().__init__()
        self.conv = tf.keras.layers.Conv2D(4, 3, strides=2, padding="same")
        self.pool = tf.keras.layers.GlobalAveragePooling2D()
        self.dense = tf.keras.layers.Dense(5)

    def call(self, images, locations=None, training=None):
        repeats = 1 + (sum(locations) if locations is not None else 0)
        tiled = tf.tile(images, [repeats, 1, 1, 1])
        return {"logits": self.dense(self.pool(self.conv(tiled)))}


def _stand_in_build_model(preset, run, **overrides):
    if run.locations is None:
        return _StandIn(), {}
    return _StandIn(), {"locations": list(run.locations)}


def test_plan_runs_pairs_sizes_and_budgets():
    runs = profile.plan_runs("fmow", "baseline,tnet", "224,448,896",
                             ["224:0;448:1;448:2", "896:2,1", "896:2,2"])
    assert [(r.model, r.input_size, r.locations) for r in runs] == [
        ("baseline", 224, None), ("baseline", 448, None), ("baseline", 896, None),
        ("tnet", 224, (0,)), ("tnet", 448, (1,)), ("tnet", 448, (2,)),
        ("tnet", 896, (2, 1)), ("tnet", 896, (2, 2))]
    # Unpinned budgets apply to every size; pinned-only budgets choose the sizes.
    assert [(r.input_size, r.locations) for r in profile.plan_runs(
        "fmow", "tnet", "448,896", ["1;2"])] == [(448, (1,)), (448, (2,)), (896, (1,)),
                                                 (896, (2,))]
    assert [r.input_size for r in profile.plan_runs(
        "fmow", "tnet", None, ["896:2,1;448:3"])] == [448, 896]
    default = profile.plan_runs("imagenet", "tnet", None, None)
    assert [(r.input_size, r.locations) for r in default] == [(224, (3,))]


@pytest.mark.parametrize("argv,flag", [
    (["--model=resnet"], "--model"),
    (["--input_size=20"], "--input_size"),
    (["--input_size=448,x"], "--input_size"),
    (["--model=baseline", "--locations=2"], "--locations"),
    (["--locations=2,1"], "--locations"),  # 3 levels do not fit in 448 px
    (["--locations=10"], "--locations"),  # a 3x3 grid has 9 cells
    (["--locations=0,1", "--input_size=896"], "--locations"),
    (["--locations=896:2,1", "--input_size=448"], "--locations"),
    (["--measure=params,speed"], "--measure"),
    (["--batch_size=0"], "--batch_size"),
    (["--warmup_batches=-1"], "--warmup_batches"),
    (["--json=/no/such/folder/rows.json"], "--json"),
])
def test_bad_flags_fail_before_any_work_with_one_line(argv, flag, monkeypatch):
    monkeypatch.setattr(profile, "build_model", lambda *a: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as exit_info:
        _run_main(argv)
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {flag}:") and "\n" not in message


def test_rows_table_and_json_with_a_stand_in_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profile, "build_model", _stand_in_build_model)
    path = tmp_path / "rows.json"
    _run_main(["--preset=fmow", "--model=baseline,tnet", "--input_size=448",
               "--locations=0;2", "--measure=params,flops,time,memory", "--batch_size=1",
               "--num_batches=2", "--warmup_batches=1", f"--json={path}"])
    rows = json.loads(path.read_text())
    assert [(r["model"], r["locations"]) for r in rows] == [
        ("baseline", None), ("tnet", [0]), ("tnet", [2])]
    for row in rows:
        assert set(KEYS) <= set(row) and row["input_size"] == 448
        assert row["params"] == 3 * 9 * 4 + 4 + 4 * 5 + 5
        assert row["ms_per_image"] > 0 and row["peak_memory_bytes"] > 0
        assert row["memory_method"] in ("process_peak_rss", "tensorflow_device_peak")
    one_image = 3 * 9 * 224 * 224 * 4 + 4 * 5
    assert [r["flops"] for r in rows] == [one_image, one_image, 3 * one_image]
    assert rows[2]["total_locations"] == 2
    table = capsys.readouterr().out
    assert "| baseline |" in table and "2 (total 2)" in table


def test_real_baseline_at_small_size(tmp_path):
    path = tmp_path / "rows.json"
    _run_main(["--preset=fmow", "--model=baseline", "--input_size=64", f"--json={path}"])
    (row,) = json.loads(path.read_text())
    assert set(KEYS) <= set(row)
    assert row["model"] == "baseline" and row["locations"] is None
    assert row["params"] == 4_128_993  # EfficientNet-B0 with 62 classes
    # The baseline is EfficientNet-B0 with its classifier: the same cost as Keras's.
    keras_b0 = tf.keras.applications.EfficientNetB0(weights=None, classes=62,
                                                    input_shape=(64, 64, 3))
    assert row["flops"] == profiling.count_flops_eq11(keras_b0, (64, 64, 3))
    assert 1.8 * row["flops"] <= row["flops_profiler"] <= 2.6 * row["flops"]
    assert row["ms_per_image"] is None and row["memory_method"] is None


@pytest.mark.slow
def test_fmow_tnet_rows_match_table_2(tmp_path):
    path = tmp_path / "rows.json"
    _run_main(["--preset=fmow", "--model=tnet", "--input_size=448", "--locations=1;2",
               f"--json={path}"])
    rows = json.loads(path.read_text())
    assert [r["locations"] for r in rows] == [[1], [2]]
    assert rows[0]["flops"] == pytest.approx(0.77e9, rel=0.02)  # Table 2
    assert rows[1]["flops"] == pytest.approx(1.16e9, rel=0.02)
    assert rows[0]["params"] == rows[1]["params"] == pytest.approx(4.56e6, rel=0.005)


def test_mgnet_and_resnet50_baseline_match_the_mgnet_paper(tmp_path):
    """MGNet paper, Table 1 (ImageNet-100): MGNet-ResNet-50 with 4 glimpses of
    96 px from 224 px, 3.172 GFLOPs; the ResNet-50 FF-Net at 224, 4.104."""
    path = tmp_path / "rows.json"
    _run_main(["--model=mgnet", "--backbone=resnet50", "--num_classes=100", "--input_size=224",
               "--glimpses=1,4", "--glimpse_size=96", "--measure=params,flops",
               f"--json={path}"])
    one, four = json.loads(path.read_text())
    assert (one["model"], one["glimpses"], four["glimpses"]) == ("mgnet", 1, 4)
    assert four["flops"] == pytest.approx(3.172e9, rel=0.03)
    assert one["params"] == four["params"]          # early exit: one model
    _run_main(["--model=baseline", "--backbone=resnet50", "--num_classes=100",
               "--input_size=224", "--measure=params,flops", f"--json={path}"])
    (baseline,) = json.loads(path.read_text())
    assert baseline["flops"] == pytest.approx(4.104e9, rel=0.03)
    assert baseline["params"] == 23_587_712 + 2048 * 100 + 100   # ResNet-50 + classifier


@pytest.mark.parametrize("argv,flag", [
    (["--model=mgnet", "--glimpses=0"], "--glimpses"),
    (["--model=mgnet", "--glimpse_size=512"], "--glimpse_size"),
    (["--model=mgnet", "--backbone=resnet18"], "--backbone"),
])
def test_bad_mgnet_flags_fail_with_one_line(argv, flag, monkeypatch):
    monkeypatch.setattr(profile, "build_model", lambda *a, **k: pytest.fail("built a model"))
    with pytest.raises(SystemExit) as exit_info:
        _run_main(argv)
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {flag}:") and "\n" not in message
