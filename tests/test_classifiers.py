"""CNN classifiers: model shapes, the data-parallel train step, evaluation over a whole split,
resume, the run's outputs and bad input."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from classifiers_jax.configs import base, cifar10, cifar10_fast, cifar100, fashion_mnist, mnist
from classifiers_jax.models.cnn import CNN, BasicCNN, FastCIFARNet
from classifiers_jax.trainers import classifier
from common_jax import data as data_lib
from common_jax.activations import ACTIVATIONS
from common_jax.checkpoint import Checkpointer, config_differences
from common_jax.config_utils import apply_overrides
from common_jax.errors import UserError
from common_jax.parallel import DataParallel
from tests.helpers import write_idx

NUM_TRAIN, NUM_TEST = 96, 37  # 37: not a multiple of any evaluation batch used here


def labelled_digits(folder, seed=0):
    """Random 28x28 'digits' with labels 0..9: a train and a test split in idx files."""
    rng = np.random.RandomState(seed)
    write_idx(folder, rng.randint(0, 256, (NUM_TRAIN, 28, 28)), rng.randint(0, 10, NUM_TRAIN))
    write_idx(folder, rng.randint(0, 256, (NUM_TEST, 28, 28)), rng.randint(0, 10, NUM_TEST),
              prefix="t10k")
    return folder


def classifier_config(data_path, variant="smoke", **overrides) -> ml_collections.ConfigDict:
    """The MNIST classifier config (smoke by default) on a given folder, with overrides."""
    c = mnist.get_config(variant)
    c.data.path = str(data_path)
    c.data.tfds_name = ""
    c.eval_batch_size = 16  # 37 test examples: batches of 16 + 16 + 5 real rows
    return apply_overrides(c, overrides)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return labelled_digits(tmp_path_factory.mktemp("digits"))


# ----------------------------------------------------------------------------- models


def output_shape(model, size, channels):
    images = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
    return jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)


@pytest.mark.parametrize("size,channels,num_classes", [(28, 1, 10), (32, 3, 100)])
@pytest.mark.parametrize("model_class", [BasicCNN, CNN, FastCIFARNet])
def test_every_model_maps_images_to_logits(model_class, size, channels, num_classes):
    model = model_class(num_classes=num_classes, channels=channels, width=4)
    out = output_shape(model, size, channels)
    assert out.shape == (2, num_classes) and out.dtype == jnp.float32


def test_model_options_and_every_activation():
    for head in ("gap", "flatten"):
        for batch_norm in (True, False):
            model = CNN(width=4, depth=3, convs_per_stage=1, batch_norm=batch_norm, head=head,
                        hidden=8, dropout=0.5)
            assert output_shape(model, 28, 1).shape == (2, 10)
    assert output_shape(CNN(width=4, dtype=jnp.bfloat16), 32, 1).dtype == jnp.float32
    for name in ACTIVATIONS:
        for model in (BasicCNN(width=2, activation=name), CNN(width=2, activation=name),
                      FastCIFARNet(width=2, channels=1, activation=name)):
            assert output_shape(model, 32, 1).shape == (2, 10), name


@pytest.mark.parametrize("arch", ["basic", "cnn", "fast"])
def test_bfloat16_compute_keeps_float32_params_and_close_logits(arch):
    config = mnist.get_config("smoke")
    config.model.arch, config.model.channels, config.model.image_size = arch, 1, 32
    images = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 1), minval=-1, maxval=1)
    logits = {}
    for dtype in ("float32", "bfloat16"):
        config.model.dtype = dtype
        model = classifier.make_model(config)
        variables = model.init(jax.random.PRNGKey(0), images)
        assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
        logits[dtype] = model.apply(variables, images)
    assert logits["bfloat16"].dtype == jnp.float32
    scale = float(jnp.abs(logits["float32"]).max())
    assert 0 < float(jnp.abs(logits["bfloat16"] - logits["float32"]).max()) < 0.05 * scale
    config.model.dtype = "float16"
    with pytest.raises(UserError, match="--config.model.dtype to one of float32, bfloat16"):
        classifier.make_model(config)


def test_real_sizes_of_the_configs_models():
    def count(config):
        return sum(x.size for x in jax.tree.leaves(jax.eval_shape(
            lambda: classifier.create_state(config)).net.params))

    sizes = {m.__name__.split(".")[-1]: count(m.get_config())
             for m in (mnist, fashion_mnist, cifar10, cifar10_fast, cifar100)}
    # FastCIFARNet at width 64: stem 3*3*3*32, blocks 64/256/256, head 256*10 (+ BN terms)
    assert 1.9e6 < sizes["cifar10_fast"] < 2.0e6, sizes
    assert sizes["cifar100"] > sizes["cifar10"] > sizes["mnist"], sizes


@pytest.mark.parametrize("model_class", [BasicCNN, CNN, FastCIFARNet])
def test_wrong_channel_count_names_both_counts_and_the_config_key(model_class):
    model = model_class(channels=3, width=4)
    with pytest.raises(UserError, match=r"3-channel images but got 1-channel.*"
                                        r"--config.model.channels=1"):
        output_shape(model, 32, 1)


def test_too_deep_for_the_image_size_is_refused():
    with pytest.raises(UserError, match="--config.model.depth"):
        output_shape(CNN(width=4, depth=5), 28, 1)


# ----------------------------------------------------------------------------- optimizer


def test_schedules_and_optimizers():
    c = base.get_base_config()
    c.num_steps = 100
    c.optimizer.lr = 1.0
    c.optimizer.schedule = "onecycle"
    c.optimizer.pct_start = 0.25
    c.optimizer.start_lr_fraction = 0.1
    schedule = classifier.make_schedule(c)
    np.testing.assert_allclose([schedule(0), schedule(25), schedule(100)], [0.1, 1.0, 0.0],
                               atol=1e-6)
    c.optimizer.schedule, c.optimizer.warmup_steps = "cosine", 10
    schedule = classifier.make_schedule(c)
    np.testing.assert_allclose([schedule(0), schedule(10), schedule(55), schedule(100)],
                               [0.0, 1.0, 0.5, 0.0], atol=1e-6)
    c.optimizer.schedule = "constant"
    np.testing.assert_allclose([classifier.make_schedule(c)(i) for i in (0, 5, 50)],
                               [0.0, 0.5, 1.0], atol=1e-6)
    c.optimizer.warmup_steps = 0
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)}}
    grads = jax.tree.map(jnp.zeros_like, params)
    for name in classifier.OPTIMIZERS:
        c.optimizer.name = name
        tx = classifier.make_optimizer(c)
        updates, _ = tx.update(grads, tx.init(params), params)
        # zero gradients: only the weight decay moves the weights, and only kernels
        assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0
        assert float(jnp.abs(updates["conv"]["bias"]).max()) == 0
    for key, value in (("name", "lamb"), ("schedule", "step")):
        c.optimizer[key] = value
        with pytest.raises(UserError, match=f"--config.optimizer.{key}"):
            classifier.make_optimizer(c)
        c.optimizer.name, c.optimizer.schedule = "sgd", "cosine"


# ----------------------------------------------------------------------------- train step


def fake_batch(config, seed=0):
    rng = np.random.RandomState(seed)
    m = config.model
    shape = (config.batch_size, m.image_size, m.image_size, m.channels)
    return {"image": rng.uniform(-1, 1, shape).astype(np.float32),
            "label": rng.randint(0, m.num_classes, config.batch_size).astype(np.int32)}


def run_steps(config, mode, num_devices, num_steps=2):
    """num_steps compiled steps under a retrace guard; returns (host state, last metrics)."""
    dp = DataParallel(mode, jax.devices()[:num_devices])
    frozen = ml_collections.FrozenConfigDict(config)

    @chex.assert_max_traces(n=1)  # a second trace would mean a recompilation
    def step_fn(state, batch):
        return classifier.train_step(state, batch, config=frozen)

    compiled = dp.compile(step_fn, donate=False)
    state = dp.put_state(classifier.create_state(config))
    for i in range(num_steps):
        state, metrics = compiled(state, dp.put_batch(fake_batch(config, seed=i)))
    return dp.get_state(state), dp.get_metrics(metrics)


@pytest.mark.parametrize("mode,arch", [("shard_map", "cnn"), ("pmap", "cnn"),
                                       ("shard_map", "fast")])
def test_eight_devices_compute_what_one_device_computes(digits, mode, arch):
    # Batch norm (statistics over the global batch), label smoothing, weight decay and dropout
    # (masks drawn for the global batch) all on.
    config = classifier_config(digits, **{"model.arch": arch, "loss.label_smoothing": 0.1,
                                          "model.dropout": 0.3})
    chex.clear_trace_counter()
    one_state, one_metrics = run_steps(config, mode, 1)
    chex.clear_trace_counter()
    eight_state, eight_metrics = run_steps(config, mode, 8)
    assert int(eight_state.step) == 2
    assert set(eight_metrics) == {"loss", "accuracy", "lr", "grad_norm", "finite"}
    for key in one_metrics:
        np.testing.assert_allclose(eight_metrics[key], one_metrics[key], rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(jax.device_get(eight_state), jax.device_get(one_state),
                                rtol=1e-4, atol=1e-5)
    # the step really changed the weights and the batch-norm statistics
    fresh = classifier.create_state(config)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b),
                           (eight_state.net.params, eight_state.net.batch_stats),
                           (fresh.net.params, fresh.net.batch_stats))
    assert all(jax.tree.leaves(changed))


# ----------------------------------------------------------------------------- evaluation


def numpy_evaluation(state, config, source):
    """Loss, top-1, top-5 and the confusion matrix of a state, example by example on the host."""
    images = source.images.astype(np.float32) / 127.5 - 1.0  # 28x28 gray: no resize
    logits = np.asarray(classifier.make_model(config).apply(
        state.net.variables(), images, train=False), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    labels = source.labels
    confusion = np.zeros((10, 10), np.int64)
    np.add.at(confusion, (labels, logits.argmax(-1)), 1)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    return {"loss": -log_probs[np.arange(len(labels)), labels].mean(),
            "top1": (logits.argmax(-1) == labels).mean(),
            "top5": (top5 == labels[:, None]).any(-1).mean(), "confusion": confusion}


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_evaluation_counts_every_example_once_and_masks_the_padding(digits, mode):
    config = classifier_config(digits, parallel=mode)
    source = data_lib.load_source(config.data, split="test")
    state = classifier.create_state(config)
    evaluator = classifier.Evaluator(config, source)  # batches of 16 over 8 devices
    assert [int(b["mask"].sum()) for b in evaluator.batches()] == [16, 16, 5]
    result = evaluator(state)
    expected = numpy_evaluation(state, config, source)
    assert result["num_examples"] == NUM_TEST
    assert np.array(result["confusion_matrix"]).sum() == NUM_TEST
    np.testing.assert_array_equal(result["confusion_matrix"], expected["confusion"])
    for key in ("loss", "top1", "top5"):
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-5)


def test_test_time_augmentation_weights_the_named_views(digits):
    config = classifier_config(digits)
    state = classifier.create_state(config)
    images = np.random.RandomState(1).uniform(-1, 1, (4, 28, 28, 1)).astype(np.float32)

    def plain(x):
        return np.asarray(classifier.make_model(config).apply(
            state.net.variables(), x, train=False))

    def flipped(x):
        return (plain(x) + plain(x[:, :, ::-1])) / 2

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 2:, 2:], padded[:, :-2, :-2]
    assert up_left[0, 0, 0, 0] == images[0, 1, 1, 0]  # content moved up and left by one
    expected = {
        (False, False): plain(images),
        (True, False): flipped(images),
        (False, True): plain(images) / 2 + (plain(up_left) + plain(down_right)) / 4,
        (True, True): flipped(images) / 2 + (flipped(up_left) + flipped(down_right)) / 4,
    }
    for (flip, translate), logits in expected.items():
        tta = apply_overrides(config.copy_and_resolve_references(),
                              {"tta_flip": flip, "tta_translate": translate})
        np.testing.assert_allclose(classifier.logits_of(state, images, tta), logits, rtol=1e-5,
                                   atol=1e-6, err_msg=f"flip={flip}, translate={translate}")
    assert not np.allclose(expected[(True, True)], expected[(False, False)], atol=1e-4)


def test_test_time_augmentation_settings_never_block_resuming(digits):
    older = json.loads(json.dumps(classifier_config(digits).to_dict()))  # as checkpoints hold it
    del older["tta_translate"]  # a checkpoint written before the setting existed
    current = classifier_config(digits, tta_flip=True, tta_translate=True)
    assert config_differences(older, current.to_dict(), classifier.RESUMABLE) == []


def test_run_writes_eval_metrics_confusion_matrix_and_summary(digits, tmp_path):
    config = classifier_config(digits)
    summary = classifier.train_and_evaluate(config, tmp_path)
    assert summary["final_step"] == 6
    for name in ["summary.json", "metrics.jsonl", "losses.png", "accuracy.png",
                 "confusion_matrix.png"]:
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert {"eval_top1", "eval_top5", "eval_loss", "loss", "accuracy"} <= set(
        saved["final_metrics"])
    evaluation = saved["eval"]
    assert evaluation["step"] == 6 and evaluation["num_examples"] == NUM_TEST
    assert np.array(evaluation["confusion_matrix"]).sum() == NUM_TEST
    assert set(evaluation["per_class_accuracy"]) == {str(i) for i in range(10)}
    assert evaluation["top1"] == saved["final_metrics"]["eval_top1"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_top1" in r] == [3, 6]
    # the class names are saved with the config, for `train.py classify`
    meta = Checkpointer(tmp_path, asynchronous=False)
    assert meta.read_meta(6)["config"]["data"]["class_names"] == [str(i) for i in range(10)]
    meta.close()


def final_state(workdir, config):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    state, meta = checkpointer.restore(checkpointer.steps()[-1], jax.eval_shape(
        lambda: classifier.create_state(config)))
    checkpointer.close()
    return jax.device_get(state), meta


def test_resumed_run_equals_uninterrupted_run_bitwise(digits, tmp_path):
    # Augmentation and dropout on: both must continue exactly where they stopped. 96 images,
    # batch 16: 6 steps per epoch, so the resumed half crosses an epoch boundary. The schedule's
    # length is fixed: by default it follows num_steps, which differs between the two halves.
    settings = {"checkpoint_every": 100, "data.eval_split": "", "data.augment": "cifar",
                "model.dropout": 0.3, "optimizer.decay_steps": 8}
    config = classifier_config(digits, num_steps=8, **settings)
    classifier.train_and_evaluate(config, tmp_path / "straight")
    classifier.train_and_evaluate(classifier_config(digits, num_steps=4, **settings),
                                  tmp_path / "resumed")
    summary = classifier.train_and_evaluate(config, tmp_path / "resumed")
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    straight, _ = final_state(tmp_path / "straight", config)
    resumed, meta = final_state(tmp_path / "resumed", config)
    assert meta["data"]["streams"] == {"train": {"examples": 8 * config.batch_size}}
    chex.assert_trees_all_equal(resumed, straight)


# ----------------------------------------------------------------------------- bad input


def test_labels_outside_num_classes_name_the_fix(digits, tmp_path):
    with pytest.raises(UserError, match=r"labels up to 9, outside \[0, 5\); set "
                                        r"--config.model.num_classes to 10"):
        classifier.train_and_evaluate(classifier_config(digits, **{"model.num_classes": 5}),
                                      tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any(
        (tmp_path / "checkpoints").iterdir())


def test_unlabelled_data_is_refused(tmp_path):
    write_idx(tmp_path, np.zeros((20, 28, 28)), np.zeros(20))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="has no labels.*subfolder"):
        classifier.train_and_evaluate(classifier_config(tmp_path), tmp_path / "run")


def test_missing_data_folder_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="does not exist; set --config.data.path"):
        classifier.train_and_evaluate(classifier_config(tmp_path / "nowhere"), tmp_path / "r")


def test_eval_batch_the_devices_cannot_share_is_refused(digits, tmp_path):
    with pytest.raises(UserError, match="--config.eval_batch_size to a multiple of 8"):
        classifier.train_and_evaluate(classifier_config(digits, eval_batch_size=12), tmp_path)


def test_wrong_number_of_class_names_is_refused(digits, tmp_path):
    config = classifier_config(digits, **{"data.class_names": ("a", "b")})
    with pytest.raises(UserError, match="class_names has 2 names for 10 classes"):
        classifier.train_and_evaluate(config, tmp_path)


def test_variants_combine_and_unknown_ones_are_refused():
    c = mnist.get_config("basic+smoke")
    assert c.model.arch == "basic" and c.model.width == 4 and c.optimizer.name == "adam"
    with pytest.raises(UserError, match="basic, smoke"):
        mnist.get_config("huge")


def test_activation_study_trains_each_activation_and_writes_table(tmp_path):
    from classifiers_jax import activation_study

    data = labelled_digits(tmp_path / "data")
    results = activation_study.main(["--workdir", str(tmp_path / "study"), "--steps", "2",
                                      "--only", "relu", "binary_step", "--batch_size", "16",
                                      "--data_path", str(data)])
    assert list(results) == ["binary_step", "relu"]  # in the order of the study's list
    for row in results.values():
        assert 0.0 <= row["test_top1"] <= 1.0 and row["steps"] == 2
    table = (tmp_path / "study" / "study.md").read_text()
    assert "| relu |" in table and "| binary_step |" in table
    # A second call reads the finished runs back instead of training again.
    again = activation_study.main(["--workdir", str(tmp_path / "study"), "--steps", "2",
                                   "--only", "relu", "--batch_size", "16",
                                   "--data_path", str(data)])
    assert again["relu"] == results["relu"]
