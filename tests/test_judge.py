"""GAN scores with a classifier judge: penultimate features, a judge loaded from a classifier
run, judge FID/KID and mode coverage on known cases, data-parallel sampling, periodic scores in
a DCGAN run, `train.py eval`, and bad input. A tiny classifier trained for 3 steps on random
digits is the judge: the mechanics are under test, not its accuracy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from classifiers_jax.configs import mnist
from classifiers_jax.models.cnn import CNN, BasicCNN, FastCIFARNet
from classifiers_jax.trainers import classifier
from common_jax.checkpoint import config_differences, restore_for_inference
from common_jax.errors import UserError
from common_jax.metrics import class_coverage
from common_jax.metrics import gan_metrics as gm
from common_jax.metrics import judge as judge_lib
from gans_jax import evaluation
from gans_jax.trainers import dcgan
from tests.helpers import random_digits, smoke_config

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"metrics.num_samples": 48, "metrics.periodic_num_samples": 24,
          "metrics.batch_size": 16, "metrics.kid_subsets": 4, "metrics.kid_subset_size": 16}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Random labelled 28x28 digits: 96 train and 40 test images."""
    return random_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def judge_dir(digits, tmp_path_factory):
    """A classifier run (3 steps of the MNIST smoke config): the judge."""
    config = mnist.get_config("smoke")
    config.data.path, config.data.tfds_name, config.data.eval_split = str(digits), "", ""
    config.num_steps = 3
    workdir = tmp_path_factory.mktemp("judge")
    classifier.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def gan_dir(digits, judge_dir, tmp_path_factory):
    """A smoke DCGAN run scored by the judge every 3 steps (and at the end, step 6)."""
    workdir = tmp_path_factory.mktemp("gan")
    config = smoke_config(digits, **SCORES, **{"metrics.judge_workdir": str(judge_dir),
                                               "metrics.every": 3})
    dcgan.train_and_evaluate(config, workdir)
    return workdir


def level_images(classes, seed=0):
    """28x28 gray images whose brightness encodes a class 0..9 (plus a little noise)."""
    rng = np.random.RandomState(seed)
    levels = (np.asarray(classes, np.float32) + 0.5) / 5.0 - 1.0
    noise = rng.uniform(-0.03, 0.03, (len(levels), 28, 28, 1)).astype(np.float32)
    return levels[:, None, None, None] + noise


class BrightnessJudge(nn.Module):
    """A fake classifier: class = brightness decile; features = (mean, std)."""

    @nn.compact
    def __call__(self, x, train=False):
        mean = x.mean(axis=(1, 2, 3))
        self.sow("intermediates", "features", jnp.stack([mean, x.std(axis=(1, 2, 3))], -1))
        level = jnp.clip(jnp.floor((mean + 1.0) * 5.0), 0, 9).astype(jnp.int32)
        return 10.0 * jax.nn.one_hot(level, 10)


class PooledConv(nn.Module):
    """Stands in for the Inception network: [B, 8, 8, 3] pixel values -> {"pool3": [B, 6]}."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x / 128.0 - 1.0))
        return {"pool3": x.mean(axis=(1, 2))}


def tiny_inception(resize):
    """Stands in for `gm.load_feature_network`: the real network is minutes per batch here."""
    module = PooledConv()
    variables = module.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
    return gm.FeatureNetwork(module, variables, "tiny", "hash0", resize, image_size=8)


def brightness_judge():
    return judge_lib.classifier_judge(BrightnessJudge(), {}, name="judge:brightness",
                                      image_size=28, channels=1, num_classes=10)


# ------------------------------------------------------------------------ penultimate features


@pytest.mark.parametrize("model,channels", [(BasicCNN(width=2, hidden=6), 1),
                                            (CNN(width=2, hidden=5), 1),
                                            (FastCIFARNet(width=2, channels=3), 3)])
def test_every_classifier_sows_the_input_of_its_head(model, channels):
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, channels))
    variables = jax.jit(model.init)(jax.random.key(1), x)  # jit: one compile, not one per op
    assert "intermediates" not in variables  # nothing new in checkpoints
    logits, sown = jax.jit(lambda v: model.apply(v, x, mutable=["intermediates"]))(variables)
    (features,) = sown["intermediates"]["features"]
    head = variables["params"]["head"]
    # The recorded features are exactly what the head layer maps to the logits.
    expected = features @ head["kernel"] + head.get("bias", 0.0)
    scale = getattr(model, "logit_scale", 1.0)
    np.testing.assert_allclose(logits, expected * scale, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- the judge itself


def test_judge_from_a_classifier_run_is_deterministic_and_predicts_as_the_classifier(
        judge_dir, digits):
    judge = judge_lib.load_judge(judge_dir)
    assert judge.name == f"judge:{Path(judge_dir).resolve()}" and judge.step == 3
    assert (judge.image_size, judge.channels, judge.num_classes) == (28, 1, 10)
    assert len(judge.weights_hash) == 12
    images = level_images(np.arange(37) % 10)  # 37: padding over 8 devices
    eight = list(judge.outputs(images, batch_size=16))
    again = list(judge.outputs([images[:20], images[20:]], batch_size=16))
    one = list(judge.outputs(images, batch_size=16, devices=jax.devices()[:1]))
    features = np.concatenate([o["features"] for o in eight])
    config, state, _ = restore_for_inference(judge_dir, lambda c: classifier)
    m = config.model  # the head's input: the last stage's channels, pooled or flattened
    side = 28 // 2**m.depth if m.head == "flatten" else 1
    assert features.shape == (37, m.width * 2 ** (m.depth - 1) * side * side)
    np.testing.assert_array_equal(np.concatenate([o["features"] for o in again]), features)
    # Per-device batches of 2 vs 16 rows may round differently in the last bits.
    np.testing.assert_allclose(np.concatenate([o["features"] for o in one]), features,
                               rtol=1e-5, atol=1e-7)
    expected = classifier.predict_proba(state, images, config).argmax(-1)
    np.testing.assert_array_equal(np.concatenate([o["predicted"] for o in eight]), expected)


def test_judge_fid_of_a_data_set_against_itself_is_zero(judge_dir):
    judge = judge_lib.load_judge(judge_dir)
    real = level_images(np.arange(60) % 10, seed=1)
    ref = judge_lib.judge_reference(judge, [real[:25], real[25:]], dataset="levels",
                                    split="test", num_samples=60, batch_size=16)
    same = judge_lib.score(judge, real, ref, num_samples=60, batch_size=16, kid_subsets=3,
                           kid_subset_size=30)
    assert abs(same["fid"]) < 1e-6 * max(1.0, np.trace(ref.sigma))
    assert same["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert same["class_histogram"] == ref.class_counts.tolist()
    assert same["protocol"] == {
        "n_real": 60, "n_fake": 60, "reference_dataset": "levels", "reference_split": "test",
        "resize": "none", "network": judge.name, "weights_hash": judge.weights_hash,
        "judge_step": 3, "class_reference": "judge"}
    darker = judge_lib.score(judge, real - 0.5, ref, num_samples=40, batch_size=16,
                             kid_subsets=3, kid_subset_size=30)
    assert darker["fid"] > 1e-3 and darker["protocol"]["n_fake"] == 40


# ------------------------------------------------------------------------------ mode coverage


def test_class_coverage_on_known_histograms():
    one_class = class_coverage(np.full(100, 3), 10)
    assert one_class["classes_covered"] == 1
    assert one_class["kl_to_data"] == pytest.approx(np.log(10.0))  # uniform data
    skewed = np.array([0] * 95 + [1] * 5)
    assert class_coverage(skewed, 10)["classes_covered"] == 2
    strict = class_coverage(skewed, 10, threshold=0.1)
    assert strict["classes_covered"] == 1 and strict["coverage_threshold"] == 0.1
    data = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])  # the data has classes 0 and 1 only
    assert class_coverage(np.array([0, 1]), 10, data)["kl_to_data"] == pytest.approx(0.0)
    assert class_coverage(np.array([2]), 10, data)["kl_to_data"] == np.inf


def test_mode_coverage_through_a_fake_judge_with_labels_or_predictions():
    judge = brightness_judge()
    real = level_images(np.arange(100) % 10)
    batches = [{"image": real[i:i + 30], "label": np.arange(i, i + 30) % 10}
               for i in range(0, 120, 30)]
    for class_reference in ("judge", "labels"):
        ref = judge_lib.judge_reference(judge, iter(batches), dataset="levels", split="train",
                                        num_samples=100, class_reference=class_reference,
                                        batch_size=32)
        assert ref.class_counts.tolist() == [10] * 10
        collapsed = judge_lib.score(judge, level_images([3] * 50, seed=2), ref, num_samples=50,
                                    batch_size=32, kid_subsets=2, kid_subset_size=20)
        assert collapsed["classes_covered"] == 1 and collapsed["class_histogram"][3] == 50
        assert collapsed["class_kl"] == pytest.approx(np.log(10.0))
        two = judge_lib.score(judge, level_images([3, 4] * 25, seed=3), ref, num_samples=50,
                              batch_size=32, kid_subsets=2, kid_subset_size=20)
        assert two["classes_covered"] == 2 and two["class_kl"] == pytest.approx(np.log(5.0))
        assert collapsed["fid"] > two["fid"] > 0.0
    with pytest.raises(UserError, match="no labels"):
        judge_lib.judge_reference(judge, [real], dataset="levels", split="train",
                                  num_samples=100, class_reference="labels")


# ------------------------------------------------------------------------------- GAN sampling


def test_data_parallel_samples_equal_one_device_generate(digits):
    config = smoke_config(digits)
    state = jax.jit(lambda: dcgan.create_state(config))()  # one compile, not one per op
    batches = list(dcgan.generate_batches(state, config, 20, batch_size=8))
    assert [len(b) for b in batches] == [8, 8, 4]
    z = dcgan.sample_z(config, 24, evaluation.SAMPLE_SEED)
    # One device, the same batches of 8 (batch norm uses the statistics of each batch).
    direct = np.concatenate([dcgan.generate(state, z[i:i + 8], config) for i in (0, 8, 16)])
    np.testing.assert_allclose(np.concatenate(batches), direct[:20], atol=2e-5)


def test_unconfigured_runs_get_no_score_action(digits):
    assert set(dcgan.make_task(smoke_config(digits)).periodic) == {"samples"}


def test_metrics_settings_never_block_resuming(digits):
    current = smoke_config(digits, **{"metrics.every": 100, "metrics.judge_workdir": "j"})
    older = smoke_config(digits).to_dict()
    del older["metrics"]  # a checkpoint written before the section existed
    assert config_differences(older, current.to_dict(), dcgan.RESUMABLE) == []
    assert evaluation.settings(ml_collections.ConfigDict(older)).num_samples == 10_000


def test_runs_saved_before_the_dtype_setting_resume_in_either_precision(digits):
    older = smoke_config(digits).to_dict()
    del older["model"]["dtype"]
    for dtype in ("float32", "bfloat16"):
        current = smoke_config(digits, **{"model.dtype": dtype})
        assert config_differences(older, current.to_dict(), dcgan.RESUMABLE) == []
    assert config_differences(older, smoke_config(digits, **{"model.g_width": 4}).to_dict(),
                              dcgan.RESUMABLE)


def test_inception_scores_through_the_scorer_with_a_stand_in_network(digits, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(gm, "load_feature_network", tiny_inception)
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))  # the reference statistics cache
    scorer = evaluation.SampleScorer(smoke_config(digits, **SCORES, **{"metrics.inception": True}))
    rng = np.random.RandomState(0)
    result = scorer.score(lambda n: [rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)], 30)
    assert set(result) == {"inception"} and result["inception"]["fid"] > 0
    assert result["inception"]["protocol"] == {
        "n_real": 40, "n_fake": 30, "reference_dataset": str(digits), "reference_split": "test",
        "resize": "tf1_bilinear", "network": "tiny", "weights_hash": "hash0"}
    assert evaluation.scalars(result) == {"inception_fid": result["inception"]["fid"],
                                          "inception_kid": result["inception"]["kid_mean"],
                                          "inception_samples": 30.0}
    assert list((tmp_path / "fid_stats").iterdir())  # cached for the next run


def test_floor_scores_real_images_of_another_split_with_timing(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(gm, "load_feature_network", tiny_inception)
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    config = smoke_config(digits, **SCORES)
    result = evaluation.score_real_split(config, "train", num=32)
    scores = result["inception"]
    assert result["scored_split"] == "train" and scores["fid"] > 0
    assert scores["protocol"]["n_fake"] == 32 and scores["protocol"]["n_real"] == 32
    assert scores["protocol"]["reference_split"] == "test"
    assert not scores["reference_cached"] and scores["reference_seconds"] > 0
    assert scores["scored_seconds"] > 0
    again = evaluation.score_real_split(config, "train", num=32)["inception"]
    assert again["reference_cached"] and again["reference_seconds"] == 0.0
    assert again["fid"] == pytest.approx(scores["fid"], rel=1e-6)  # same images, same seed
    with pytest.raises(UserError, match="is the reference split itself"):
        evaluation.score_real_split(config, "test")


# ---------------------------------------------------------------------- scores in a GAN run


def test_periodic_scores_reach_metrics_jsonl_and_summary(gan_dir, judge_dir):
    records = [json.loads(line) for line in (gan_dir / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in records if "judge_fid" in r}
    assert sorted(scored) == [3, 6]
    for r in scored.values():
        assert {"judge_kid", "judge_classes_covered", "judge_class_kl"} <= set(r)
    summary = json.loads((gan_dir / "summary.json").read_text())
    final = summary["gan_metrics"]
    assert final["step"] == 6 and summary["final_metrics"]["judge_fid"] == final["judge"]["fid"]
    protocol = final["judge"]["protocol"]
    assert protocol["n_fake"] == 48 and protocol["n_real"] == 40  # the whole 40-image test split
    assert protocol["reference_split"] == "test"
    assert protocol["network"] == f"judge:{Path(judge_dir).resolve()}"
    assert sum(final["judge"]["class_histogram"]) == 48


def test_eval_command_writes_summary_eval_and_tensorboard(gan_dir, judge_dir, tmp_path):
    workdir = tmp_path / "gan"
    shutil.copytree(gan_dir, workdir)
    events_before = set(os.listdir(workdir / "tensorboard"))
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "eval", f"--workdir={workdir}", "--num=24",
         f"--judge_workdir={judge_dir}"], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "judge: FID" in result.stdout and "n_fake 24" in result.stdout, result.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == 6 and "gan_metrics" in summary  # training's, kept
    assert summary["eval"]["step"] == 6
    assert summary["eval"]["judge"]["protocol"]["n_fake"] == 24
    new_events = set(os.listdir(workdir / "tensorboard")) - events_before
    assert len(new_events) == 1
    from tensorflow.compat.v1 import train as tf1_train

    tags = {value.tag for event in tf1_train.summary_iterator(
        str(workdir / "tensorboard" / new_events.pop())) for value in event.summary.value}
    assert {"eval_judge_fid", "eval_judge_kid", "eval_judge_classes_covered"} <= tags
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6 and last["eval_judge_fid"] == summary["eval"]["judge"]["fid"]


def test_eval_scores_an_earlier_checkpoint_and_the_raw_generator(gan_dir, judge_dir, tmp_path):
    workdir = tmp_path / "gan"
    shutil.copytree(gan_dir, workdir)
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    command = [sys.executable, str(ROOT / "train.py"), "eval", f"--workdir={workdir}",
               "--num=24", f"--judge_workdir={judge_dir}"]
    result = subprocess.run(command + ["--step=3", "--noema"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "checkpoint step 3" in result.stdout and "raw generator" in result.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["eval_raw"]["step"] == 3 and "eval" not in summary
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["eval_raw_judge_fid"] == summary["eval_raw"]["judge"]["fid"]
    assert not any(key.startswith("eval_judge") for key in last)
    # a step without a checkpoint names the ones there are
    result = subprocess.run(command + ["--step=5"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no checkpoint at step 5 in {workdir}; it holds steps 3, 6: give one of them "
        "to --step")


def test_eval_of_the_raw_generator_samples_without_the_weight_average(gan_dir, judge_dir,
                                                                       tmp_path, monkeypatch):
    from common_jax.checkpoint import restore_for_inference

    config, state, _ = restore_for_inference(gan_dir, lambda _: dcgan, step=3)
    assert int(state.step) == 3
    used = []
    generate = dcgan.generate_batches
    monkeypatch.setattr(dcgan, "generate_batches",
                        lambda *a, **k: used.append(k["use_ema"]) or generate(*a, **k))
    for use_ema in (False, True):
        dcgan.evaluate_checkpoint(config, state, str(tmp_path), num=8, use_ema=use_ema,
                                  judge_workdir=str(judge_dir))
    assert used and set(used[:len(used) // 2]) == {False} and set(used[len(used) // 2:]) == {True}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval_raw"]["step"] == summary["eval"]["step"] == 3


# ------------------------------------------------------------------------------- bad input


def test_eval_without_a_checkpoint_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "eval",
                             f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint") and "train first" in last, last
    assert "Traceback" not in result.stderr and not (tmp_path / "checkpoints").exists()


def test_floor_without_a_config_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "floor"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: floor needs --config path.py[:variant] (its data and metrics sections)")


def test_bad_judges_and_missing_inception_weights_name_the_fix(digits, judge_dir, gan_dir,
                                                               tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    with pytest.raises(UserError, match="holds no checkpoint; train a classifier there"):
        judge_lib.load_judge(empty)
    assert not empty.exists()
    with pytest.raises(UserError, match="gans_jax.trainers.dcgan run, not a classifier"):
        judge_lib.load_judge(gan_dir)
    rgb = smoke_config(digits, **{"model.image_size": 32, "model.channels": 3,
                                  "metrics.judge_workdir": str(judge_dir)})
    with pytest.raises(UserError, match="classifies 28x28x1 images but the GAN makes 32x32x3"):
        evaluation.SampleScorer(rgb)
    with pytest.raises(UserError, match="coverage_threshold"):
        evaluation.SampleScorer(smoke_config(digits, **{"metrics.coverage_threshold": 0.0}))
    config, state, _ = restore_for_inference(gan_dir, lambda c: dcgan)
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "no_weights"))
    with pytest.raises(UserError, match="make fid-weights"):
        dcgan.evaluate_checkpoint(config, state, str(tmp_path), inception=True)
    with pytest.raises(UserError, match="nothing to score"):
        dcgan.evaluate_checkpoint(config, state, str(tmp_path), judge_workdir="")
