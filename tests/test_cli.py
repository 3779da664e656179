"""train.py end to end: real MNIST, TFDS mock data, SIGTERM and resume, sampling, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from gans_jax.configs import dcgan_mnist
from gans_jax.trainers import dcgan
from tests.conftest import shared_data
from tests.helpers import tiny_digits

ROOT = Path(__file__).resolve().parents[1]
MNIST_CONFIG = str(ROOT / "gans_jax" / "configs" / "dcgan_mnist.py")


def train_cmd(workdir, *overrides, config=MNIST_CONFIG + ":smoke", command=()):
    return [sys.executable, str(ROOT / "train.py"), *command, f"--config={config}",
            f"--workdir={workdir}", *overrides]


def run(cmd, timeout=300):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_smoke_run_on_real_mnist_then_sample(tmp_path):
    mnist = shared_data("mnist")
    result = run(train_cmd(tmp_path, f"--config.data.path={mnist}"))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_step"] == 6
    assert summary["config"]["data"]["path"] == str(mnist)
    out = tmp_path / "grid.png"
    result = run([sys.executable, str(ROOT / "train.py"), "sample", f"--workdir={tmp_path}",
                  "--num=9", f"--out={out}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 9 samples from step 6" in result.stdout and out.stat().st_size > 100


def test_smoke_run_on_tfds_mock_data(tmp_path):
    config = dcgan_mnist.get_config("smoke")
    config.data.path = ""
    with tfds.testing.mock_data(num_examples=64):
        summary = dcgan.train_and_evaluate(config, tmp_path)
    assert summary["final_step"] == 6
    assert (tmp_path / "samples_final.png").is_file()


def test_sigterm_saves_exits_cleanly_and_resumes_without_losing_a_step(tmp_path):
    digits = tiny_digits(tmp_path / "digits")
    workdir = tmp_path / "run"
    cmd = train_cmd(workdir, f"--config.data.path={digits}", "--config.num_steps=100000",
                    "--config.checkpoint_every=1000", "--config.log_every=1")
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists()
                                      or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    summary = json.loads((workdir / "summary.json").read_text())
    stopped_at = summary["final_step"]
    assert summary["stopped_by"] == "SIGTERM" and summary["checkpoint_step"] == stopped_at
    assert stopped_at >= 5
    assert str(stopped_at) in os.listdir(workdir / "checkpoints")

    result = run(train_cmd(workdir, f"--config.data.path={digits}",
                           f"--config.num_steps={stopped_at + 2}",
                           "--config.checkpoint_every=1000", "--config.log_every=1"))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((workdir / "summary.json").read_text())
    assert resumed["start_step"] == stopped_at and resumed["final_step"] == stopped_at + 2


@pytest.mark.parametrize("overrides,message", [
    (["--config.data.path=/nonexistent/folder", "--config.data.tfds_name="],
     "data folder '/nonexistent/folder' does not exist"),
    (["--config.data.path=", "--config.data.tfds_name=mnsit"], "mnist"),
    (["--config.batch_size=12"], "not divisible by the 8 devices"),
    (["--config.model.image_size=30"], "image_size 30 cannot be made"),
    (["--config.parallel=threads"], "unknown parallel mode"),
])
def test_bad_input_gives_one_line_error_naming_the_fix(tmp_path, overrides, message):
    digits = tiny_digits(tmp_path / "digits")
    result = run(train_cmd(tmp_path / "run", f"--config.data.path={digits}", *overrides))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in result.stderr


def test_sample_without_checkpoint_says_to_train_first(tmp_path):
    result = run([sys.executable, str(ROOT / "train.py"), "sample", f"--workdir={tmp_path}"])
    assert result.returncode == 2 and "train first" in result.stderr
