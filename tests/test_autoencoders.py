"""Convolutional autoencoders: shapes, bad latent sizes, training, resume, both parallel modes,
the reconstruct and features commands, the linear probe and the bicubic baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from autoencoders_jax import baselines
from autoencoders_jax.configs import cifar10
from autoencoders_jax.models.conv_ae import ConvAutoencoder
from autoencoders_jax.trainers import autoencoder
from common_jax.checkpoint import Checkpointer
from common_jax.config_utils import apply_overrides
from common_jax.errors import UserError
from common_jax.linear_probe import fit_linear_probe
from common_jax.metrics import image_quality
from common_jax.parallel import DataParallel

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def smooth_images(rng, n: int, size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3]: blurred colour blobs (structure an autoencoder can learn)."""
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    return np.clip(coarse.repeat(size // 4, 1).repeat(size // 4, 2), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/{a,b}/*.png (32 images) and test/{a,b}/*.png (12), 16x16 RGB."""
    root = tmp_path_factory.mktemp("ae_images")
    rng = np.random.RandomState(0)
    for split, n in (("train", 32), ("test", 12)):
        for i, image in enumerate(smooth_images(rng, n)):
            path = root / split / "ab"[i % 2] / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


def ae_config(folder, variant="smoke", **overrides) -> ml_collections.ConfigDict:
    c = cifar10.get_config(variant)
    c.data.path = str(folder)
    c.data.tfds_name = ""
    c.model.image_size = SIZE
    c.eval_batch_size = 8  # 12 test images: 8 + 4 real rows
    return apply_overrides(c, overrides)


def batch_of(config, n=16, seed=0):
    rng = np.random.RandomState(seed)
    return {"image": smooth_images(rng, n, config.model.image_size) / 127.5 - 1.0,
            "label": np.zeros(n, np.int32)}


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("kind,latent_shape", [("vector", (2, 48)), ("map", (2, 4, 4, 3))])
@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_both_bottlenecks_give_images_and_latents_of_the_right_shape(kind, latent_shape, norm):
    model = ConvAutoencoder(image_size=32, widths=(4, 8, 8), latent_kind=kind, latent_size=48,
                            norm=norm, upsample="nearest" if norm == "group" else "transpose4")
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (2, 32, 32, 3)
    z = jax.eval_shape(lambda v: model.apply(v, x, method=model.encode), variables)
    assert z.shape == latent_shape


def test_a_latent_size_the_map_cannot_hold_names_the_fix():
    model = ConvAutoencoder(image_size=32, widths=(4, 8, 8), latent_kind="map", latent_size=100)
    with pytest.raises(UserError, match=r"multiple of 16 \(e.g. 96 or 112\)"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    odd = ConvAutoencoder(image_size=20, widths=(4, 8, 8))
    with pytest.raises(UserError, match="cannot be halved 3 times"):
        odd.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 3)))


def test_jax_ssim_matches_the_reference_implementation():
    rng = np.random.RandomState(0)
    a = rng.uniform(0, 1, (3, 16, 16, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(autoencoder.ssim(jnp.asarray(a), jnp.asarray(b)),
                               image_quality.ssim(a, b, data_range=1.0), atol=2e-4)


# ----------------------------------------------------------------------------- training


def run_steps(config, mode: str, steps: int):
    dp = DataParallel(mode)
    step = dp.compile(lambda s, b: autoencoder.train_step(
        s, b, config=ml_collections.FrozenConfigDict(config)))
    state = dp.put_state(autoencoder.create_state(config))
    batch = batch_of(config)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, dp.put_batch(batch))
        losses.append(dp.get_metrics(metrics)["loss"])
    return dp.get_state(state), losses


def test_steps_lower_the_loss_and_shard_map_and_pmap_agree(folder):
    config = ae_config(folder, **{"model.norm": "batch", "loss.ssim_weight": 0.5,
                                  "loss.kind": "l1", "optimizer.schedule": "constant"})
    a, losses_a = run_steps(config, "shard_map", 3)
    b, losses_b = run_steps(config, "pmap", 3)
    assert losses_a[-1] < losses_a[0]
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), rtol=1e-4, atol=1e-6)


def latest_state(workdir, config):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    try:
        abstract = jax.eval_shape(lambda: autoencoder.create_state(config))
        return jax.device_get(checkpointer.restore_latest(abstract)[0])
    finally:
        checkpointer.close()


def test_resumed_run_equals_uninterrupted_run_bitwise(folder, tmp_path):
    settings = {"data.eval_split": "", "sample_every": 0, "checkpoint_every": 100,
                "optimizer.decay_steps": 4}
    config = ae_config(folder, num_steps=4, **settings)
    autoencoder.train_and_evaluate(config, tmp_path / "straight")
    autoencoder.train_and_evaluate(ae_config(folder, num_steps=2, **settings),
                                   tmp_path / "resumed")
    summary = autoencoder.train_and_evaluate(config, tmp_path / "resumed")
    assert summary["start_step"] == 2 and summary["final_step"] == 4
    chex.assert_trees_all_equal(latest_state(tmp_path / "resumed", config),
                                latest_state(tmp_path / "straight", config))


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args, timeout=300):
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_smoke_run_then_reconstruct_and_features_through_train_py(folder, tmp_path):
    workdir = tmp_path / "run"
    config = "autoencoders_jax/configs/cifar10.py:smoke"
    result = run_cli(f"--config={config}", f"--workdir={workdir}", f"--config.data.path={folder}",
                     f"--config.model.image_size={SIZE}", "--config.eval_batch_size=8")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == 6 and summary["eval"]["num_examples"] == 12
    assert 0 < summary["eval"]["ssim"] < 1 and summary["eval"]["psnr"] > 5
    assert (workdir / "reconstructions_final.png").is_file()
    assert "eval_psnr" in (workdir / "metrics.jsonl").read_text()

    # A 24x24 input is resized to the run's 16x16, saying so.
    big = tmp_path / "big.png"
    Image.fromarray(smooth_images(np.random.RandomState(3), 1, 24)[0]).save(big)
    result = run_cli("reconstruct", f"--workdir={workdir}", folder / "test/a/000.png", big,
                     f"--out={tmp_path / 'rec'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resized to the model's 16x16" in result.stderr
    with Image.open(tmp_path / "rec" / "big_recon.png") as image:
        assert image.size == (2 * SIZE + 2, SIZE)
    assert (tmp_path / "rec" / "000_recon.png").is_file()

    out = tmp_path / "test.npz"
    result = run_cli("features", f"--workdir={workdir}", "--split=test", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(out) as data:
        assert data["features"].shape == (12, 64) and data["features"].dtype == np.float32
        np.testing.assert_array_equal(data["labels"], np.repeat([0, 1], 6))  # folder order
        protocol = json.loads(str(data["protocol"]))
    assert protocol["step"] == 6 and protocol["split"] == "test"
    assert protocol["feature_dim"] == 64 and protocol["resolution"] == SIZE
    assert (workdir / "features" / "test-6.npz").is_file()  # the cache a second call reuses


def test_reconstruct_of_a_run_without_checkpoint_is_one_line(tmp_path):
    result = run_cli("reconstruct", f"--workdir={tmp_path}", ROOT / "README.md")
    assert result.returncode == 2 and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- probe, baselines


def clusters(n, dim, num_classes, seed, spread=0.3):
    rng = np.random.RandomState(seed)
    centres = np.random.RandomState(99).normal(0, 1, (num_classes, dim))
    y = rng.randint(0, num_classes, n)
    return (centres[y] + spread * rng.normal(0, 1, (n, dim))).astype(np.float32), y


def test_linear_probe_separates_clusters_and_stays_at_chance_on_random_labels():
    train_x, train_y = clusters(2000, 32, 4, seed=0)
    test_x, test_y = clusters(500, 32, 4, seed=1)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=5)
    assert result["test_accuracy"] > 0.97 and result["settings"]["seed"] == 0
    again = fit_linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=5)
    assert again["test_accuracy"] == result["test_accuracy"]  # deterministic given the seed
    rng = np.random.RandomState(2)
    noise = fit_linear_probe(train_x, rng.randint(0, 4, 2000), test_x, rng.randint(0, 4, 500),
                             num_classes=4, epochs=5)
    assert abs(noise["test_accuracy"] - 0.25) < 0.07


def test_bicubic_baseline_sizes_and_sanity():
    assert [baselines.bicubic_side(k) for k in (64, 128, 256, 384, 3072)] == [4, 6, 9, 11, 32]
    images = jnp.asarray(smooth_images(np.random.RandomState(0), 4, 32) / 127.5 - 1.0,
                         jnp.float32)
    full = autoencoder.quality(images, baselines.bicubic_roundtrip(images, 32))
    small = autoencoder.quality(images, baselines.bicubic_roundtrip(images, 4))
    assert float(full["psnr"].min()) > 60 and float(full["ssim"].min()) > 0.999
    assert float(small["psnr"].max()) < float(full["psnr"].min())
    with pytest.raises(UserError, match="at least 3"):
        baselines.bicubic_side(2)


@pytest.mark.parametrize("kind", ["vector", "map"])
def test_pytorch_twin_has_the_same_parameter_count_and_output_shape(kind):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_models

    config = cifar10.get_config("smoke")
    config.model.latent_kind = kind
    twin = torch_models.autoencoder_from_config(config)
    variables = jax.eval_shape(lambda: autoencoder.create_state(config)).net.params
    assert torch_models.count_parameters(twin) == sum(x.size for x in jax.tree.leaves(variables))
    assert twin(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
