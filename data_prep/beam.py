"""The converters' shard tasks on Apache Beam (`--runner=beam`).

Every shard is one element of the pipeline, written by the same function
the local process pool runs (`shards.write_shard`, `digits._write_shard`),
so the shards and reports are byte-identical whatever the runner and the
worker count. The tasks are pickled to a file in the output directory that
the workers read, so the output directory must be a file system every
worker sees: local for the DirectRunner, a shared mount on a cluster.

    python -m data_prep.cub --input_dir=... --output_dir=... --runner=beam \\
        --beam_pipeline_options=direct_running_mode=multi_processing,direct_num_workers=8

`--beam_pipeline_options` holds Beam's standard pipeline options,
comma-separated, without their dashes (runner=FlinkRunner,flink_master=...).
Install Beam with `pip install -e .[beam]`.
"""
from __future__ import annotations

import functools
import os
import pickle
from typing import Callable, List, Sequence

RUNNERS = ("local", "beam")


def define_flags() -> None:
    """`--runner` and `--beam_pipeline_options`, shared by every converter."""
    from absl import flags

    flags.DEFINE_enum("runner", "local", RUNNERS, "local: a process pool of --workers; "
                      "beam: an Apache Beam pipeline (pip install -e .[beam]).")
    flags.DEFINE_string("beam_pipeline_options", "", "Beam pipeline options for --runner=beam, "
                        "comma-separated without dashes, e.g. runner=DirectRunner,"
                        "direct_running_mode=multi_processing,direct_num_workers=8.")


def pipeline_options(text: str) -> List[str]:
    """`key=value,flag` -> ["--key=value", "--flag"] (Beam's own flag syntax)."""
    return [f"--{option.strip().lstrip('-')}" for option in text.split(",") if option.strip()]


def run_tasks(function: Callable, tasks: Sequence, folder: str, name: str,
              options: Sequence[str] = ()) -> None:
    """Runs `function(task)` for every task on a Beam pipeline with `options`;
    the tasks travel in `<folder>/<name>.tasks.pkl` (removed at the end)."""
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as error:
        raise RuntimeError("--runner=beam needs Apache Beam: pip install -e .[beam]") from error
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.tasks.pkl")
    with open(path + ".tmp", "wb") as stream:
        pickle.dump(list(tasks), stream)
    os.replace(path + ".tmp", path)
    try:
        with beam.Pipeline(options=PipelineOptions(list(options))) as pipeline:
            _ = (pipeline
                 | "shards" >> beam.Create(range(len(tasks)))
                 | "spread" >> beam.Reshuffle()
                 | "write" >> beam.Map(_run_task, path, function))
    finally:
        os.remove(path)


def _run_task(index: int, path: str, function: Callable):
    return function(_load(path)[index])


@functools.lru_cache(maxsize=2)
def _load(path: str) -> list:
    with open(path, "rb") as stream:
        return pickle.load(stream)
