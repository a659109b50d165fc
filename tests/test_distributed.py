"""Training steps under MirroredStrategy (2 logical CPUs) equal single-device steps.

The logical devices must be configured before TensorFlow initialises, so the
comparison runs in its own process (tests/scripts/distributed_step.py).
"""
import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "distributed_step.py"


def test_two_replicas_update_like_one_device_with_the_same_global_batch():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    # SGD moved the weights by up to ~0.4; the two runs agree to float precision.
    assert report["largest_update"] > 1e-2
    assert report["max_weight_difference"] < 1e-5, report["worst_weight"]
    distributed, single = report["baseline"]
    assert abs(distributed - single) < 1e-7 and distributed != 0.5
    # The location module's inputs are detached in training: on 2 replicas too,
    # REINFORCE alone moves the location module and leaves the backbone at exactly 0.
    assert report["reinforce_gradients"]["replicas"] == 2
    assert report["reinforce_gradients"]["backbone"] == 0.0
    assert report["reinforce_gradients"]["location_module"] > 1e-6
    # Metrics are aggregated across replicas: the logs agree too.
    for name, value in report["logs"]["single"].items():
        assert abs(report["logs"]["distributed"][name] - value) < 1e-5, name
