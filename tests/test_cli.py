"""train.py end to end: real MNIST, TFDS mock data, SIGTERM and resume, sampling, errors, and a
classifier trained and then used by `train.py classify`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

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


# ----------------------------------------------------------------------------- classifiers

CIFAR10_CONFIG = str(ROOT / "classifiers_jax" / "configs" / "cifar10.py")
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "frog": (40, 40, 200)}


def run_quick(cmd, timeout=300):
    """`run`, compiling with few XLA optimisations (as conftest does in-process): the commands'
    flow is under test, not their speed, and full optimisation costs tens of seconds here."""
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def coloured_classes(folder, per_class):
    """train/<class>/*.png and test/<class>/*.png: noisy 32x32 images of one colour per class."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for name, colour in COLOURS.items():
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (32, 32, 3)), 0, 255)
                path = folder / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
    return folder


def test_train_a_classifier_then_classify_image_files(tmp_path):
    data = coloured_classes(tmp_path / "data", {"train": 8, "test": 5})
    workdir = tmp_path / "run"
    result = run_quick(train_cmd(workdir, f"--config.data.path={data}",
                                 "--config.model.num_classes=3", "--config.eval_batch_size=16",
                                 config=CIFAR10_CONFIG + ":smoke"))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["eval"]["num_examples"] == 15
    assert set(summary["eval"]["per_class_accuracy"]) == set(COLOURS)
    assert (workdir / "confusion_matrix.png").is_file()

    images = [data / "test" / "dog" / "0.png", data / "test" / "frog" / "1.png"]
    result = run_quick([sys.executable, str(ROOT / "train.py"), "classify",
                        f"--workdir={workdir}", *map(str, images), "--top=2"])
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"checkpoint step 6 in {workdir}"
    assert lines[1] == str(images[0]) and lines[4] == str(images[1])
    shown = [line.split() for line in lines[2:4] + lines[5:7]]
    # two classes per image, named as in the training folders, with probabilities
    assert all(len(s) == 2 and s[1] in COLOURS and s[0].endswith("%") for s in shown), lines
    top = [float(s[0].rstrip("%")) for s in shown]
    assert top[0] >= top[1] and top[2] >= top[3]


def test_classify_errors_are_one_line(tmp_path):
    classify = [sys.executable, str(ROOT / "train.py"), "classify", f"--workdir={tmp_path}"]
    for args, message in (([str(tmp_path / "missing.png")], "image file not found: "),
                          ([], "classify needs image files")):
        result = run(classify + args)
        assert result.returncode == 2, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
