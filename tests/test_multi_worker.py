"""Multi-worker training: 2 worker processes on loopback with TF_CONFIG
(tests/scripts/multi_worker.py), against one process with 2 replicas, and a
worker SIGKILLed mid-epoch."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tnet_tf.data import schema

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "multi_worker.py"
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
pytestmark = pytest.mark.slow


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("localhost", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ",".join(map(str, ports))


def start(*args):
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def events(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return events(out)


def load(path):
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


def test_two_workers_train_like_one_process_with_two_replicas(tmp_path):
    ports = free_ports(2)
    workers = [start("--ports", ports, "--index", index, "--out", tmp_path / "workers")
               for index in (0, 1)]
    logs = [finish(worker) for worker in workers]
    mirrored = finish(start("--ports", "mirrored", "--out", tmp_path / "mirrored",
                            "--initial", tmp_path / "workers" / "initial.npz"))
    first, second = (load(tmp_path / "workers" / f"weights_{i}.npz") for i in (0, 1))
    single = load(tmp_path / "mirrored" / "weights_0.npz")
    initial = load(tmp_path / "workers" / "initial.npz")
    # Both workers end with the same weights and baseline, 4 SGD steps away
    # from the start, equal to the 2-replica run within float tolerance.
    assert all(np.array_equal(first[key], second[key]) for key in first)
    assert max(np.abs(first[key] - initial[key]).max() for key in initial) > 1e-2
    assert max(np.abs(first[key] - single[key]).max() for key in first) < 1e-5
    assert first["baseline"] == pytest.approx(single["baseline"], abs=1e-7)
    assert first["baseline"] != 0.5
    # Metrics are global: every worker logs the 2-replica run's step losses and epoch logs.
    for worker in logs:
        assert [e["loss"] for e in worker if e["event"] == "step"] == pytest.approx(
            [e["loss"] for e in mirrored if e["event"] == "step"], rel=1e-5)
        for name, value in mirrored[-1]["logs"].items():
            assert worker[-1]["logs"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def write_numbered_shards(folder, shards=4, per_shard=12):
    """Shards of 64 px JPEGs whose label is the example's number (0..47)."""
    folder.mkdir()
    images = tf.cast(tf.random.stateless_uniform([shards * per_shard, 64, 64, 3], [5, 6],
                                                 maxval=256, dtype=tf.int32), tf.uint8)
    for shard in range(shards):
        path = folder / schema.shard_name("train", shard, shards)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for number in range(shard * per_shard, (shard + 1) * per_shard):
                jpeg = tf.io.encode_jpeg(images[number]).numpy()
                writer.write(schema.encode_example(jpeg, 64, 64, number, str(number),
                                                   f"{number}.jpg"))
    return shards * per_shard


def test_a_killed_worker_resumes_from_the_backup_without_seeing_an_example_twice(tmp_path):
    count = write_numbered_shards(tmp_path / "data")
    run = ["--ports", free_ports(2), "--data", tmp_path / "data", "--num_classes", count,
           "--model_dir", tmp_path / "run", "--out", tmp_path / "out", "--epochs", 3,
           "--steps_per_epoch", 6, "--save_every", 2]
    workers = [start(*run, "--index", index, "--sleep", 0.5) for index in (0, 1)]
    seen = []
    for line in workers[1].stdout:            # epoch 2 is steps 7-12; backups every 2 steps
        seen.append(line)
        if '"step": 9,' in line:
            workers[1].send_signal(signal.SIGKILL)
            break
    workers[1].wait(timeout=60)
    assert workers[1].returncode == -signal.SIGKILL
    # The surviving worker fails (or waits) on its lost peer; a cluster manager
    # restarts every failed task, as the Keras fault-tolerance guide says.
    deadline = time.time() + 60
    while workers[0].poll() is None and time.time() < deadline:
        time.sleep(1)
    if workers[0].poll() is None:
        workers[0].kill()
    workers[0].communicate(timeout=60)
    before = {e["step"]: e for e in events("".join(seen)) if e["event"] == "step"}
    killed_at = max(before)
    labels_file = [tmp_path / "out" / f"labels_{i}.jsonl" for i in (0, 1)]
    labels_before = [events(path.read_text()) for path in labels_file]

    restarted = [start(*run, "--index", index) for index in (0, 1)]
    after = [finish(worker) for worker in restarted]
    for worker, path, earlier in zip(after, labels_file, labels_before):
        resumed, done = worker[0], worker[-1]
        steps = sorted(e["step"] for e in worker if e["event"] == "step")
        # Resumed from the step-8 backup: at most one backup interval repeated.
        assert resumed["event"] == "start" and resumed["step"] == 8
        assert killed_at - resumed["step"] <= 2
        assert resumed["baseline"] == pytest.approx(before[8]["baseline"], abs=1e-7)
        assert steps == list(range(9, 19)) and done["step"] == 18
        # The repeated steps read the same batches, and the interrupted epoch
        # (steps 7-12) holds no example twice.
        first_run = {e["step"]: e["labels"] for e in earlier}
        second_run = {e["step"]: e["labels"] for e in events(path.read_text())[len(earlier):]}
        assert sorted(second_run) == list(range(9, 19))
        assert [first_run[s] for s in range(9, killed_at + 1)] == \
            [second_run[s] for s in range(9, killed_at + 1)]
        epoch = [n for s in (7, 8) for n in first_run[s]]
        epoch += [n for s in range(9, 13) for n in second_run[s]]
        assert len(epoch) == 24 and len(set(epoch)) == 24, sorted(epoch)
    first, second = (load(tmp_path / "out" / f"weights_{i}.npz") for i in (0, 1))
    assert all(np.array_equal(first[key], second[key]) for key in first)
    # Only the chief keeps backups and summaries; the other worker's temporary copies are gone.
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "backup" / "chief"))
    assert (tmp_path / "run" / "logs" / "train").is_dir()
    assert not [path for path in (tmp_path / "run").rglob("*") if "workertemp" in path.name]


def test_an_entry_point_trains_on_two_workers_and_only_the_chief_writes(tmp_path):
    ports = free_ports(2).split(",")
    workers = []
    for index in (0, 1):
        tf_config = {"cluster": {"worker": [f"localhost:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "experiments.fmow", "--smoke", "--strategy=multi_worker",
             f"--model_dir={tmp_path / 'run'}"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=dict(ENV, TF_CONFIG=json.dumps(tf_config)),
            cwd=pathlib.Path(__file__).parent.parent))
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    # Both workers log the same global epoch metrics; only the chief generated
    # the smoke data and wrote the run, summaries and final weights.
    epochs = [[line for line in output.splitlines() if line.startswith("2/2 - ")]
              for output in outputs]
    assert len(epochs[0]) == 2
    metrics = [[line.split(" - ")[2:-2] for line in lines] for lines in epochs]   # no timings
    assert metrics[0] == metrics[1] and "loss: " in metrics[0][0][0]
    assert "generating the smoke dataset" in outputs[0]
    assert "generating the smoke dataset" not in outputs[1]
    stage = tmp_path / "run" / "train_448"
    assert (stage / "run.json").exists() and (stage / "logs" / "train").is_dir()
    assert tf.train.latest_checkpoint(str(stage / "final"))
    assert not [path for path in (tmp_path / "run").rglob("*") if "workertemp" in path.name]
