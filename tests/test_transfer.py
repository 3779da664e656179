"""ResNet50 transfer: frozen features of a data split (cached, with their protocol), the
pretrained backbone merged under a new head, frozen batch-norm statistics and stage-by-stage
unfreezing in the classifier's train step. Random weights in the converter's format stand in
for the ImageNet ones, so nothing here needs the real weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from classifiers_jax import resnet_weights, transfer
from classifiers_jax.configs import resnet50_cifar10
from classifiers_jax.trainers import classifier
from common_jax.errors import UserError
from common_jax.parallel import DataParallel
from tests.test_resnet import random_variables

CLASSES = ("cat", "dog")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    flat = random_variables("keras")
    meta = {"layout": np.array("keras"), "source": np.array("random"),
            "class_names": np.array([f"class{i}" for i in range(1000)])}
    path, _ = resnet_weights.write_npz(flat, meta, folder, "keras")
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 5)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., c] //= 4  # a class signal: one channel darker
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def config_for(images, weights, **model):
    c = resnet50_cifar10.get_config("smoke")
    c.data.path, c.data.tfds_name = str(images), ""
    c.model.weights = str(weights)
    c.model.num_classes = len(CLASSES)
    c.model.update(model)
    return c


def test_features_are_computed_once_and_named_by_weights_split_and_resolution(
        images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    c = config_for(images, weights)
    features, labels, protocol = transfer.extract(c, "test", batch_size=8)
    assert features.shape == (10, 2048) and features.dtype == np.float32
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 5
    assert np.isfinite(features).all() and features.std() > 0
    sha = resnet_weights.sha256_of_file(weights)
    assert protocol["weights_sha256"] == sha and protocol["resolution"] == 32
    assert protocol["split"] == "test" and protocol["examples"] == 10
    (cached,) = (tmp_path / "features").glob("*.npz")
    assert cached.name == f"resnet50-{sha[:12]}-{images.name}-test-32px.npz"
    # the second call reads the file: the cache is the source of truth once written
    with np.load(cached) as data:
        np.savez(cached, features=data["features"] + 1, labels=data["labels"],
                 protocol=data["protocol"])
    again, _, again_protocol = transfer.extract(c, "test", batch_size=8)
    np.testing.assert_array_equal(again, features + 1)
    assert again_protocol == protocol
    # the features are the frozen network's: equal to the model applied directly
    variables, meta = resnet_weights.load_resnet50(weights)
    model = resnet_weights.model_for(meta, preprocess="caffe")
    first = np.asarray(Image.open(images / "test" / "cat" / "0.png"), np.float32) / 127.5 - 1
    direct = model.apply(variables, first[None], train=False, features_only=True)
    assert any(np.allclose(row, direct[0], atol=1e-4) for row in features)


def test_upsampled_features_are_the_classify_paths(images, weights, tmp_path, monkeypatch):
    """The feature path resizes and preprocesses exactly as `train.py classify` does (the
    path whose ImageNet logits match Keras'), here with 32 px images upsampled to 64."""
    from common_jax import data as data_lib

    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    c = config_for(images, weights, image_size=64)
    features, _, protocol = transfer.extract(c, "test", batch_size=8)
    assert protocol["resolution"] == 64 and protocol["preprocess"] == "caffe"
    variables, meta = resnet_weights.load_resnet50(weights)
    model = resnet_weights.model_for(meta, preprocess="caffe")
    pixels = data_lib.load_image_files([images / "test" / "dog" / "3.png"], image_size=64,
                                       channels=3)
    assert pixels.shape == (1, 64, 64, 3) and -1 <= pixels.min() < pixels.max() <= 1
    direct = np.asarray(model.apply(variables, pixels, train=False, features_only=True))[0]
    distances = np.abs(features - direct).max(axis=1)
    assert distances.min() < 1e-4 and np.sort(distances)[1] > 1e-2  # one row, and only one


def test_preprocessing_is_part_of_the_cache_name(images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    caffe, _, _ = transfer.extract(config_for(images, weights), "test", batch_size=8)
    torch, _, protocol = transfer.extract(config_for(images, weights, preprocess="torch"),
                                          "test", batch_size=8)
    assert protocol["preprocess"] == "torch"
    names = sorted(p.name for p in (tmp_path / "features").glob("*.npz"))
    assert len(names) == 2 and names[0].endswith("-test-32px-torch.npz")
    assert names[1].endswith("-test-32px.npz")
    assert np.abs(caffe - torch).max() > 1e-3  # not the caffe file read back


def test_probe_chooses_l2_on_training_examples_only(images, weights, tmp_path, monkeypatch):
    from common_jax.linear_probe import L2_GRID

    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    result = transfer.probe(config_for(images, weights), 32, val_fraction=0.25)
    selection = result["probe"]["l2_selection"]
    assert selection["num_fit"] == 9 and selection["num_validation"] == 3  # of 12 training
    assert result["probe"]["settings"]["l2"] == selection["l2"] in L2_GRID
    assert result["probe"]["num_test"] == 10 and result["test_features"]["split"] == "test"


def test_pretrained_backbone_under_a_new_head(images, weights):
    c = config_for(images, weights)
    state = classifier.create_state(c)
    loaded = dict(jax.tree_util.tree_flatten_with_path(state.net.params)[0])
    flat = {jax.tree_util.keystr(k): v for k, v in loaded.items()}
    source = random_variables("keras")
    np.testing.assert_array_equal(flat["['stage3_0']['conv2']['kernel']"],
                                  source["params/stage3_0/conv2/kernel"])
    assert flat["['head']['kernel']"].shape == (2048, len(CLASSES))
    c.model.layout = "torchvision"
    with pytest.raises(UserError, match="keras-layout weights.*--config.model.layout=keras"):
        classifier.create_state(c)


def test_frozen_statistics_and_unfreezing_in_the_train_step(images, weights):
    c = config_for(images, weights)
    state = classifier.create_state(c)
    batch = {"image": jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)),
                                  jnp.float32),
             "label": jnp.asarray([0, 1, 0, 1])}
    dp = DataParallel("shard_map", jax.devices()[:1])
    step = dp.compile(lambda s, b: classifier.train_step(s, b, config=c), donate=False)
    after, _ = step(dp.put_state(state), dp.put_batch(batch))
    after = dp.get_state(after)

    def moved(path):
        before = state.net.params
        now = after.net.params
        for key in path:
            before, now = before[key], now[key]
        return float(jnp.abs(now - before).max())

    # step 0 of the smoke schedule: the head trains, every backbone stage waits its turn
    assert moved(("head", "kernel")) > 0
    assert moved(("stage5_0", "conv1", "kernel")) == 0
    assert moved(("stem", "conv1", "kernel")) == 0
    # running statistics stay ImageNet's (here: the file's) with batch_norm_frozen
    jax.tree.map(np.testing.assert_array_equal, state.net.batch_stats, after.net.batch_stats)


def test_transfer_cli_reports_missing_weights_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    code = transfer.main(["--resolution", "32", "--split-limit", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "make resnet-weights" in err[0]


def test_features_command_hook_without_a_run_uses_the_pretrained_weights(
        images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))
    c = config_for(images, weights)
    features, labels, protocol = classifier.extract_features(c, str(tmp_path / "run"), "test")
    assert features.shape == (10, 2048) and len(labels) == 10
    assert protocol["weights_sha256"] == resnet_weights.sha256_of_file(weights)
    c.model.arch = "cnn"
    with pytest.raises(UserError, match="ResNet50's pooled features.*'cnn'"):
        classifier.extract_features(c, str(tmp_path / "run"), "test")


def test_probe_on_two_resolutions_side_by_side(images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    single = transfer.probe(config_for(images, weights), 32, l2=1e-3)
    both = transfer.probe(config_for(images, weights), (32, 48), l2=1e-3)
    assert both["resolution"] == "32+48" and both["probe"]["feature_dim"] == 2 * 2048
    assert single["probe"]["feature_dim"] == 2048
    assert [p["resolution"] for p in both["train_features"]] == [32, 48]
    assert both["probe"]["num_train"] == single["probe"]["num_train"] == 12


def test_block_outputs_follow_the_final_features(images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    c = config_for(images, weights)
    plain, labels, _ = transfer.extract(c, "test", batch_size=8)
    more, more_labels, protocol = transfer.extract(c, "test", batch_size=8,
                                                   blocks=("stage4_5", "stage3_3"))
    assert more.shape == (10, 2048 + 1024 + 512)
    np.testing.assert_allclose(more[:, :2048], plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(more_labels, labels)
    assert protocol["features"] == ["pooled final (2048)", "pooled stage4_5", "pooled stage3_3"]
    names = sorted(p.name for p in (tmp_path / "features").glob("*.npz"))
    assert any(n.endswith("-test-32px-stage4_5-stage3_3.npz") for n in names)
    with pytest.raises(UserError, match="no ResNet50 block 'stage4_6'"):
        transfer.extract(c, "test", blocks=("stage4_6",))


def test_grid_pool_takes_the_mean_of_each_region():
    maps = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    pooled = np.asarray(transfer.grid_pool(jnp.asarray(maps), 2))
    # regions as adaptive average pooling takes them: rows 0-2 and 2-5 of 5, columns 0-2, 2-4
    expected = [maps[:, r0:r1, c0:c1].mean(axis=(1, 2))
                for r0, r1 in ((0, 3), (2, 5)) for c0, c1 in ((0, 2), (2, 4))]
    np.testing.assert_allclose(pooled, np.concatenate(expected, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(transfer.grid_pool(jnp.asarray(maps), 1)),
                               maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_block_pooled_over_a_grid(images, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path))
    c = config_for(images, weights)
    c.model.image_size = 64  # stage 4's map is 4 x 4, so a 2 x 2 grid has equal regions
    whole, _, _ = transfer.extract(c, "test", batch_size=8, blocks=("stage4_5",))
    grid, _, protocol = transfer.extract(c, "test", batch_size=8, blocks=("stage4_5:2x2",))
    assert grid.shape == (10, 2048 + 4 * 1024)
    np.testing.assert_allclose(grid[:, :2048], whole[:, :2048], rtol=1e-5, atol=1e-5)
    # the mean of the four equal regions' means is the whole map's mean
    regions = grid[:, 2048:].reshape(10, 4, 1024)
    np.testing.assert_allclose(regions.mean(axis=1), whole[:, 2048:], rtol=1e-4, atol=1e-5)
    assert protocol["features"][1] == "pooled stage4_5 over a 2x2 grid"
    names = [p.name for p in (tmp_path / "features").glob("*.npz")]
    assert any(n.endswith("-test-64px-stage4_5-2x2.npz") for n in names)
    for bad in ("stage4_5:2x3", "stage4_5:9x9", "stage4_5:two"):
        with pytest.raises(UserError, match="square grid of regions.*stage4_5:2x2"):
            transfer.extract(c, "test", blocks=(bad,))
