"""Populations (`common_jax.population`): the config section and its one-line errors, member i of
the vmapped step equal to a single run with member i's settings (DCGAN and classifier, both
parallel modes, one compile), whole runs with per-member metrics, grids, judge FID, accuracy,
the ensemble and the best member, exact resume, member selection on the command line and the
memory check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import ml_collections
import numpy as np
import pytest

from classifiers_jax.configs import mnist
from classifiers_jax.trainers import classifier
from common_jax import data as data_lib
from common_jax import population
from common_jax.checkpoint import Checkpointer
from common_jax.config_utils import apply_overrides
from common_jax.errors import UserError
from common_jax.parallel import DataParallel
from gans_jax.configs import dcgan_mnist
from gans_jax.trainers import dcgan
from tests.helpers import random_digits, smoke_config

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"metrics.num_samples": 32, "metrics.periodic_num_samples": 16,
          "metrics.batch_size": 16, "metrics.kid_subsets": 2, "metrics.kid_subset_size": 16}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Random labelled 28x28 digits: 96 train and 40 test images."""
    return random_digits(tmp_path_factory.mktemp("digits"))


def gan_config(digits, **overrides):
    return smoke_config(digits, **overrides)


def cls_config(digits, **overrides):
    c = mnist.get_config("smoke")
    c.data.path, c.data.tfds_name = str(digits), ""
    c.eval_batch_size = 16
    return apply_overrides(c, overrides)


def pop(members, seeds=(), hparams=""):
    return {"population.members": members, "population.seeds": ",".join(map(str, seeds)),
            "population.hparams": hparams}


def restore(workdir, config, create_state):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    state, meta = checkpointer.restore(checkpointer.steps()[-1],
                                       jax.eval_shape(lambda: create_state(config)))
    checkpointer.close()
    return jax.device_get(state), meta


def assert_close(member, single):
    """Equal to float tolerance, leaf by leaf: |a - b| <= 1e-4 max|b| + 1e-6, except at most
    1 value in 10,000 of a leaf (and at least 2), which must stay within 1e-3.

    Vmapped convolutions add in another order. Adam moves a weight by about lr whatever the
    size of its gradient, so where a gradient is near 0 that reordering can move the weight by
    a visible part of lr (seen: 1 of 78,400 values of G's projection by 3e-5 at lr 5e-4).
    """
    paths = jax.tree_util.tree_flatten_with_path(single)[0]
    assert jax.tree.structure(member) == jax.tree.structure(single)
    for (path, b), a in zip(paths, jax.tree.leaves(member), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a - b)
        off = diff > 1e-4 * np.max(np.abs(b), initial=0.0) + 1e-6
        where = jax.tree_util.keystr(path)
        assert off.sum() <= max(2, a.size // 10_000), f"{where}: {off.sum()} of {a.size} differ"
        assert diff.max(initial=0.0) <= 1e-3, f"{where}: differs by {diff.max()}"


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- the section


def test_the_section_is_off_in_every_shipped_config():
    for config in (dcgan_mnist.get_config(), mnist.get_config()):
        assert not population.enabled(config)
        assert population.parse(config) == population.Spec(0, (), {})
    # configs saved before the section existed read as off
    older = dcgan_mnist.get_config().to_dict()
    del older["population"]
    assert not population.enabled(ml_collections.ConfigDict(older))


def test_member_configs_carry_each_members_seed_and_values(digits):
    config = gan_config(digits, seed=5, **pop(3, (5, 6, 7), "optimizer.g_lr=1e-4,2e-4,3e-4 "
                                                           "ema_decay=0.9,0.99,0.999"))
    spec = population.check(config, dcgan.POPULATION_KEYS)
    assert spec.hparams == {"optimizer.g_lr": (1e-4, 2e-4, 3e-4),
                            "ema_decay": (0.9, 0.99, 0.999)}
    second = population.member_config(config, 1)
    assert (second.seed, second.optimizer.g_lr, second.ema_decay) == (6, 2e-4, 0.99)
    assert second.optimizer.d_lr == config.optimizer.d_lr and not population.enabled(second)
    # without seeds every member takes the config's
    assert population.parse(gan_config(digits, seed=3, **pop(2, (), "optimizer.d_lr=1,2")),
                            dcgan.POPULATION_KEYS).seeds == (3, 3)


@pytest.mark.parametrize("overrides,message", [
    (pop(2, (0, 1), "optimizer.b3=1,2"),
     "optimizer.b3 cannot vary per member in a gans_jax.trainers.dcgan population; per-member "
     "keys: optimizer.g_lr"),
    (pop(2, (0, 1), "loss.real_label=0.9,1"), "loss.real_label cannot vary per member"),
    (pop(3, (), "optimizer.g_lr=1e-4,2e-4"),
     "gives 2 values of optimizer.g_lr for 3 members; give one per member"),
    (pop(2, (), "optimizer.g_lr=1e-4,fast"), "holds a value that is not a number"),
    (pop(2, (), "optimizer.g_lr"), "bad --config.population.hparams entry 'optimizer.g_lr'"),
    (pop(2, (), "ema_decay=0.9,0.99 ema_decay=0.9,0.9"), "gives ema_decay twice"),
    (pop(3, (0, 1)), "gives 2 seeds for 3 members"),
    ({**pop(2), "population.seeds": "0,one"}, "population.seeds must be integers, got '0,one'"),
    (pop(0, (0, 1)), "population.seeds is set but population.members is 0"),
    (pop(0, (), "ema_decay=1,2"), "population.hparams is set but population.members is 0"),
    (pop(2), "two of the 2 members have the same seed and values"),
    (pop(-1), "population.members must not be negative"),
], ids=["undeclared", "not-traceable", "length", "not-a-number", "no-values", "twice",
        "seeds-length", "seeds-not-integers", "seeds-off", "hparams-off", "identical", "negative"])
def test_section_mistakes_are_one_line(digits, overrides, message):
    with pytest.raises(UserError, match=None) as error:
        dcgan.make_task(gan_config(digits, **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_section_on_the_command_line_is_one_line():
    result = subprocess.run(
        [sys.executable, "train.py", "--config=gans_jax/configs/dcgan_mnist.py:smoke",
         "--workdir=/nonexistent/run", "--config.population.members=2",
         "--config.population.hparams=optimizer.g_lr=1e-4,2e-4,3e-4"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: population.hparams gives 3 values of optimizer.g_lr for 2 "
                           "members"), last


def test_best_member_and_member_range():
    assert population.best([3.0, 1.0, float("nan"), 1.0], lower_is_better=True) == 1
    assert population.best([0.5, 0.9, None], lower_is_better=False) == 1
    assert population.best([None, float("nan")], lower_is_better=True) is None
    population.check_member(3, 4)
    with pytest.raises(UserError, match=r"member 4 is out of range: this population has 4 "
                                        r"members \(0 to 3\)"):
        population.check_member(4, 4)


def test_metrics_are_named_per_member_with_one_finite_flag():
    metrics = {"d_loss": np.array([1.0, 2.0]), "finite": np.array([1.0, 0.0])}
    named = population.member_metrics(metrics)
    assert named == {"member0/d_loss": 1.0, "member1/d_loss": 2.0, "finite": 0.0}


def test_memory_estimate_is_linear_and_refuses_what_does_not_fit():
    assert population.estimate(4, 100, 10, 2) == 2 * (10 + 4 * 100)
    assert population.check_fits(4, 100, 10, 2, available=10_000) == 820
    mib = 1 << 20
    # 2 devices x (10 + 8 x 100) MiB = 1620 MiB, asked for 3 times, against 900 MiB: 900 / 3
    # / 2 = 150 MiB per device holds the batch and one member.
    with pytest.raises(UserError, match=r"a population of 8 members needs about 1.58 GiB "
                                        r"\(100.0 MiB per member on each of 2 device\(s\)\), 3x "
                                        r"that with headroom, but 0.88 GiB is available; set "
                                        r"--config.population.members to 1 or fewer"):
        population.check_fits(8, 100 * mib, 10 * mib, 2, available=900 * mib)
    assert population.check_fits(8, 100 * mib, 10 * mib, 2, available=900 * mib,
                                 headroom=0.5) == 1620 * mib
    assert population.check_fits(8, 100, 10, 2, available=None) == 2 * (10 + 800)


def test_a_population_that_does_not_fit_is_refused_before_training(digits, tmp_path,
                                                                     monkeypatch):
    config = gan_config(digits, **pop(4, (0, 1, 2, 3)))
    monkeypatch.setattr(population, "available_memory", lambda device: (1 << 20, 8))
    with pytest.raises(UserError, match="a population of 4 members needs about"):
        dcgan.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not list(
        (tmp_path / "checkpoints").iterdir())


# ----------------------------------------------------------------------------- member = single


def fake_batch(config, seed):
    rng = np.random.RandomState(seed)
    shape = (config.batch_size, config.model.image_size, config.model.image_size,
             config.model.channels)
    return {"image": rng.uniform(-1, 1, shape).astype(np.float32),
            "label": rng.randint(0, 10, config.batch_size).astype(np.int32)}


def steps(dp, step_fn, state, batches):
    compiled = dp.compile(step_fn, donate=False)
    metrics = None
    state = dp.put_state(state)
    for batch in batches:
        state, metrics = compiled(state, dp.put_batch(batch))
    return jax.device_get(dp.get_state(state)), dp.get_metrics(metrics)


def assert_members_equal_single_runs(trainer, config, num_steps=3):
    """Runs the population step and, for each member, the single step of its config, on the same
    batches and 8 devices; every member's state must equal its single run's."""
    dp = DataParallel(config.parallel)
    batches = [fake_batch(config, seed) for seed in range(num_steps)]
    chex.clear_trace_counter()
    traced = chex.assert_max_traces(population.wrap_step(trainer.train_step, config), n=1)
    states, metrics = steps(dp, traced, trainer.create_state(config), batches)
    assert states.members.step.tolist() == [num_steps] * population.size(config)
    for i in range(population.size(config)):
        single = population.member_config(config, i)
        state, single_metrics = steps(dp, population.wrap_step(trainer.train_step, single),
                                      trainer.create_state(single), batches)
        assert_close(population.member(states, i), state)
        for name, value in single_metrics.items():
            if name != "finite":
                np.testing.assert_allclose(metrics[population.key(i, name)], value, rtol=1e-4,
                                           atol=1e-5, err_msg=name)
    return states


def dcgan_members_case(digits, mode):
    # Seeds, learning rates, EMA decay and a gradient penalty that is on for one member only.
    config = gan_config(digits, parallel=mode, **pop(
        3, (0, 0, 7), "optimizer.g_lr=2e-4,5e-4,2e-4 optimizer.d_lr=2e-4,1e-4,3e-4 "
                      "ema_decay=0.999,0.5,0.9 loss.gradient_penalty=0,1,0"))
    states = assert_members_equal_single_runs(dcgan, config)
    kernels = states.members.g.params["project"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1])  # the members really differ
    assert states.hparams["optimizer"]["g_lr"].tolist() == pytest.approx([2e-4, 5e-4, 2e-4])


def classifier_members_case(digits, mode):
    # Dropout on: each member draws its masks from its own key.
    config = cls_config(digits, parallel=mode, **{"model.dropout": 0.3}, **pop(
        3, (0, 1, 1), "optimizer.lr=0.05,0.05,0.2 loss.label_smoothing=0,0.1,0"))
    states = assert_members_equal_single_runs(classifier, config)
    assert states.seeds.tolist() == [0, 1, 1]


# XLA's CPU collectives end the whole process when one device reaches an all-reduce more than
# 60 s after the others (a 20 s warning, then 40 s). Tests run niced beside training jobs, and
# so starved, devices were seen that late in pmap mode, aborting the test session. The pmap
# cases therefore run in a child process with a longer limit: a stall costs time, and even a
# failure there fails one test, not the session.
PATIENT_XLA_FLAGS = ("--xla_force_host_platform_device_count=8 "
                     "--xla_cpu_collective_call_terminate_timeout_seconds=1800")


def run_in_child(case: str, *args) -> None:
    """Runs this module's function `case(*args)` in a fresh Python with PATIENT_XLA_FLAGS."""
    code = (f"import sys\nfrom tests.test_population import {case}\n"
            f"{case}(*sys.argv[1:])\nprint('{case} passed')")
    env = {**os.environ, "XLA_FLAGS": PATIENT_XLA_FLAGS, "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=3600, env=env)
    assert result.returncode == 0 and f"{case} passed" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_each_dcgan_member_equals_a_single_run_with_its_settings(digits, mode):
    if mode == "pmap":
        return run_in_child("dcgan_members_case", digits, mode)
    dcgan_members_case(digits, mode)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_each_classifier_member_equals_a_single_run_with_its_settings(digits, mode):
    if mode == "pmap":
        return run_in_child("classifier_members_case", digits, mode)
    classifier_members_case(digits, mode)


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def judge_dir(digits, tmp_path_factory):
    """A classifier run (3 steps of the MNIST smoke config): the judge of the GAN samples."""
    workdir = tmp_path_factory.mktemp("judge")
    classifier.train_and_evaluate(cls_config(digits, num_steps=3, **{"data.eval_split": ""}),
                                  workdir)
    return workdir


SWEEP = pop(2, (), "optimizer.g_lr=2e-4,5e-4")  # both members on the config's seed


@pytest.fixture(scope="module")
def gan_sweep(digits, judge_dir, tmp_path_factory):
    """A two-member g_lr sweep scored by the judge every 3 steps and at the end."""
    workdir = tmp_path_factory.mktemp("sweep")
    config = gan_config(digits, **SCORES, **SWEEP, **{"metrics.judge_workdir": str(judge_dir),
                                                      "metrics.every": 3})
    return config, workdir, dcgan.train_and_evaluate(config, workdir)


def test_dcgan_sweep_members_equal_whole_single_runs(digits, gan_sweep, tmp_path):
    # Members on the config's own seed read the data order a single run reads: a whole run of
    # the population then equals the single runs, data, EMA and batch statistics included.
    config, workdir, _ = gan_sweep
    states, meta = restore(workdir, config, dcgan.create_state)
    assert meta["data"]["streams"] == {"train": {"examples": 6 * 16}}
    for i, lr in enumerate((2e-4, 5e-4)):
        dcgan.train_and_evaluate(gan_config(digits, **{"optimizer.g_lr": lr}), tmp_path / str(i))
        single, _ = restore(tmp_path / str(i), gan_config(digits), dcgan.create_state)
        assert_close(population.member(states, i), single)


def test_dcgan_sweep_writes_per_member_metrics_grids_scores_and_the_best(gan_sweep):
    _, workdir, summary = gan_sweep
    logged = records(workdir)
    names = set().union(*logged)
    assert {"member0/d_loss", "member1/g_loss", "member1/checkerboard", "member0/judge_fid",
            "member1/judge_fid", "finite"} <= names
    assert "d_loss" not in names
    assert sorted(r["step"] for r in logged if "member1/judge_fid" in r) == [3, 6]
    for i in range(2):
        assert (workdir / "samples" / f"member{i}" / "samples_0000003.png").is_file()
        assert (workdir / f"member{i}" / "samples_final.png").is_file()
    saved = json.loads((workdir / "summary.json").read_text())
    scores = [m["judge"]["fid"] for m in saved["gan_metrics"]["members"]]
    best = saved["population"]["best"]
    assert best["member"] == int(np.argmin(scores)) and best["by"] == "judge_fid"
    assert best["settings"] == {"seed": 0, "optimizer.g_lr": [2e-4, 5e-4][best["member"]]}
    assert saved["population"]["hparams"] == {"optimizer.g_lr": [2e-4, 5e-4]}
    assert saved["population"]["memory"]["estimated_bytes"] > 0
    assert summary["population"]["best"] == best


def run_cli(*args):
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def test_eval_and_sample_pick_members_on_the_command_line(gan_sweep, judge_dir):
    _, workdir, _ = gan_sweep
    result = run_cli("eval", f"--workdir={workdir}", "--num=16", f"--judge_workdir={judge_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "member 0: judge: FID" in result.stdout and "best member: " in result.stdout
    saved = json.loads((workdir / "summary.json").read_text())["eval"]
    assert len(saved["members"]) == 2 and saved["best"]["member"] in (0, 1)
    result = run_cli("eval", f"--workdir={workdir}", "--num=16", "--member=1",
                     f"--judge_workdir={judge_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "member 1's EMA generator" in result.stdout
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert "member1/eval_judge_fid" in last
    assert json.loads((workdir / "summary.json").read_text())["eval"]["member"] == 1
    result = run_cli("sample", f"--workdir={workdir}", "--member=1", "--num=4")
    assert result.returncode == 0 and (workdir / "sample_member1.png").is_file()
    for args, message in [(["--member=2"], "member 2 is out of range: this population has 2"),
                          ([], "holds a population of 2 members; choose one with --member")]:
        result = run_cli("sample", f"--workdir={workdir}", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1]


def resume_case(digits, workdir, family: str, mode: str):
    trainer, make = (dcgan, gan_config) if family == "dcgan" else (classifier, cls_config)
    workdir = Path(workdir)
    sweep = "optimizer." + ("g_lr=2e-4,4e-4" if trainer is dcgan else "lr=0.05,0.1")
    settings = {"checkpoint_every": 100, "parallel": mode, **pop(2, (0, 4), sweep)}
    if trainer is classifier:  # no evaluation; the schedule's length fixed for both halves
        settings.update({"data.eval_split": "", "optimizer.decay_steps": 8})
    config = make(digits, num_steps=8, **settings)
    trainer.train_and_evaluate(config, workdir / "straight")
    trainer.train_and_evaluate(make(digits, num_steps=4, **settings), workdir / "resumed")
    summary = trainer.train_and_evaluate(config, workdir / "resumed")
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    straight, _ = restore(workdir / "straight", config, trainer.create_state)
    resumed, _ = restore(workdir / "resumed", config, trainer.create_state)
    chex.assert_trees_all_equal(resumed, straight)


# The pmap case (about 20 s on 2 cores) runs with `make test-slow`: pmap populations are
# exercised on every run by the member-equals-single-run tests.
@pytest.mark.parametrize("family,mode", [
    ("dcgan", "shard_map"), pytest.param("classifier", "pmap", marks=pytest.mark.slow)])
def test_a_resumed_population_equals_an_uninterrupted_one_bitwise(digits, tmp_path, family,
                                                                   mode):
    if mode == "pmap":  # in a child process, as the step's pmap cases
        return run_in_child("resume_case", digits, tmp_path, family, mode)
    resume_case(digits, tmp_path, family, mode)


def test_classifier_seed_ensemble_reports_members_ensemble_and_best(digits, tmp_path):
    config = cls_config(digits, **pop(3, (0, 1, 2)))
    summary = classifier.train_and_evaluate(config, tmp_path)
    final = summary["eval"]
    assert len(final["members"]) == 3 and final["step"] == 6
    top1 = [m["top1"] for m in final["members"]]
    assert final["best"]["member"] == int(np.argmax(top1)) and final["best"]["by"] == "eval_top1"
    # The ensemble's accuracy from the members' probabilities, computed here on the host.
    states, _ = restore(tmp_path, config, classifier.create_state)
    test = data_lib.load_source(config.data, split="test")
    images = np.concatenate([b["image"] for b in data_lib.make_eval_iterator(
        test, batch_size=40, image_size=28, channels=1)])[:40]
    single = population.base_config(config)
    probabilities = [classifier.predict_proba(population.member(states, i), images, single)
                     for i in range(3)]
    for i in range(3):
        assert final["members"][i]["top1"] == pytest.approx(
            np.mean(probabilities[i].argmax(-1) == test.labels))
    expected = np.mean(np.mean(probabilities, axis=0).argmax(-1) == test.labels)
    assert final["ensemble"]["top1"] == pytest.approx(expected)
    names = set().union(*records(tmp_path))
    assert {"member2/eval_top1", "ensemble/eval_top1", "member0/accuracy", "member1/lr"} <= names
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "confusion_matrix.png").is_file()


def test_runs_saved_before_the_section_resume_and_a_changed_population_is_refused(digits,
                                                                                   tmp_path):
    older = cls_config(digits, num_steps=3, **{"data.eval_split": ""})
    with older.unlocked():
        del older["population"]
    classifier.train_and_evaluate(older, tmp_path / "old")
    summary = classifier.train_and_evaluate(
        cls_config(digits, num_steps=4, **{"data.eval_split": ""}), tmp_path / "old")
    assert summary["start_step"] == 3
    first = cls_config(digits, num_steps=3, **{"data.eval_split": ""}, **pop(2, (0, 1)))
    classifier.train_and_evaluate(first, tmp_path / "pop")
    changed = cls_config(digits, num_steps=4, **{"data.eval_split": ""}, **pop(2, (0, 2)))
    with pytest.raises(UserError, match=r"different config \(population.seeds"):
        classifier.train_and_evaluate(changed, tmp_path / "pop")


def test_a_population_classifier_cannot_serve_as_a_single_network(digits, tmp_path):
    config = cls_config(digits, num_steps=2, **{"data.eval_split": ""}, **pop(2, (0, 1)))
    classifier.train_and_evaluate(config, tmp_path)
    from common_jax.metrics import judge

    with pytest.raises(UserError, match="is a population of 2 classifiers"):
        judge.load_judge(tmp_path)
