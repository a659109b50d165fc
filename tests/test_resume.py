"""A training process killed mid-epoch (SIGKILL) resumes from its last backup."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tnet_tf import checkpoints

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "train_tiny.py"


def _events(lines):
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.slow
def test_killed_run_resumes_with_step_baseline_and_learning_rate(tmp_path):
    # 3 epochs of 8 steps, backups every 5 steps, learning rate dropped at step 19.
    command = [sys.executable, str(SCRIPT), "--model_dir", str(tmp_path), "--epochs", "3",
               "--steps_per_epoch", "8", "--save_every", "5", "--sleep", "0.3"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env=env)
    seen = []
    try:
        for line in first.stdout:
            seen.append(line)
            if '"step": 12,' in line:           # mid-epoch 2; the last backup is step 10
                first.send_signal(signal.SIGKILL)
                break
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    before = {e["step"]: e for e in _events(seen) if e["event"] == "step"}
    assert max(before) == 12
    # The step-10 backup is epoch 2's batch index 1: the input resumes at its index 2.
    assert checkpoints.resume_position(str(tmp_path), 8) == (1, 2)
    assert checkpoints.resume_position(str(tmp_path / "nothing"), 8) == (0, 0)

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    events = _events(second.stdout.splitlines())
    start, steps, done = events[0], [e for e in events if e["event"] == "step"], events[-1]
    assert start["event"] == "start" and done["event"] == "done"
    # Resumed from the step-10 backup: step count, baseline and schedule continue.
    assert start["step"] == 10
    assert start["baseline"] == pytest.approx(before[10]["baseline"], abs=1e-7)
    assert start["baseline"] != 0.5
    assert start["learning_rate"] == pytest.approx(1e-3)
    assert [e["step"] for e in steps] == list(range(11, 25))
    assert steps[0]["batch"] == 2                       # epoch 2 goes on from its 3rd batch
    rates = {e["step"]: e["step_learning_rate"] for e in steps}
    assert rates[19] == pytest.approx(1e-3) and rates[20] == pytest.approx(1e-4)
    assert done["step"] == 24 and done["learning_rate"] == pytest.approx(1e-4)
