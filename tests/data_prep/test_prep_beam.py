"""`--runner=beam`: every converter writes, on Apache Beam's DirectRunner, the
same bytes as the local process pool (shards and reports)."""
import os
import subprocess
import sys

import pytest

import raw_trees
import raw_trees_other
from data_prep import birds, cub, shards
from data_prep.problems import ProblemLog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEAM_PROCESSES = "--beam_pipeline_options=direct_running_mode=multi_processing," \
                 "direct_num_workers=2"


def files(folder):
    """{relative path: bytes} of everything a conversion wrote."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, folder)] = stream.read()
    return found


def test_beam_pipeline_writes_the_bytes_of_the_process_pool(tmp_path):
    root = tmp_path / "CUB_200_2011"
    raw_trees_other.make_birds(str(root), nabirds=False)
    class_names, label_of_class = cub.read_classes(str(root))

    def convert(out, **options):
        splits = []
        for name in ("train", "test"):
            log = ProblemLog()
            items = birds.list_split(str(root), name, log, label_of_class)
            splits.append(shards.Split(name, birds.PREFIXES[name], 3, class_names, items,
                                       log.problems))
        return shards.convert(splits, shards.Options(str(out), max_min_dim=48, progress=False,
                                                     **options))

    pool = convert(tmp_path / "pool", workers=2)
    on_beam = convert(tmp_path / "beam", runner="beam")          # in-process DirectRunner
    assert on_beam == pool
    written = files(tmp_path / "pool")
    assert sum(name.startswith("train-") for name in written) == 3
    assert files(tmp_path / "beam") == written
    with pytest.raises(ValueError, match="--runner must be one of local, beam"):
        convert(tmp_path / "bad", runner="spark")


def _make_imagenet(root):
    raw_trees_other.make_imagenet(str(root))
    return [f"--val_labels_file={root / 'val_labels.txt'}", f"--train_bbox_dir={root / 'bbox'}"]


CONVERTERS = {
    "fmow": lambda root: raw_trees.make_fmow(str(root)) and [],
    "imagenet": _make_imagenet,
    "cub": lambda root: raw_trees_other.make_birds(str(root), nabirds=False) and [],
    "nabirds": lambda root: raw_trees_other.make_birds(str(root), nabirds=True) and [],
}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", [*CONVERTERS, "digits"])
def test_every_converter_runs_on_beam_with_the_same_output(tmp_path, dataset):
    if dataset == "digits":
        command = ["--train_size=24", "--test_size=8", "--train_shards=3", "--test_shards=2"]
    else:
        root = tmp_path / "raw"
        command = [f"--input_dir={root}", "--max_min_dim=48", "--noprogress",
                   *CONVERTERS[dataset](root)]
    outputs = {}
    for runner, extra in (("local", ["--workers=2"]), ("beam", [BEAM_PROCESSES])):
        out = tmp_path / runner
        done = subprocess.run([sys.executable, "-m", f"data_prep.{dataset}", *command,
                               f"--output_dir={out}", f"--runner={runner}", *extra], cwd=REPO,
                              capture_output=True, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[runner] = files(out)
    assert len([name for name in outputs["local"] if "-of-" in name]) >= 3
    assert outputs["beam"] == outputs["local"]
