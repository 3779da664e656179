"""CycleGAN: the reference networks (shapes, parameter counts, instance norm), the image pool
against the reference's rule, 1 vs 8 devices for the whole step in both modes, a smoke run,
bitwise resume, `translate` and `train.py translate`."""

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

from common_jax.checkpoint import Checkpointer
from common_jax.config_utils import apply_overrides, check_choices
from common_jax.errors import UserError
from common_jax.parallel import DataParallel
from gans_jax.configs import cyclegan_base, cyclegan_facemask, cyclegan_fer2anime
from gans_jax.layers import conv_transpose_3x3
from gans_jax.models.cyclegan import PatchDiscriminator, ResnetGenerator
from gans_jax.trainers import cyclegan

ROOT = Path(__file__).resolve().parents[1]


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def write_domains(root: Path, sizes: dict[str, int]) -> Path:
    """The reference layout: root/trainA, trainB, testA, testB of small random PNGs (A in RGB,
    B in gray, so the channel conversion runs too)."""
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        gray = split.endswith("B")
        for i in range(n):
            shape = (20, 20) if gray else (20, 20, 3)
            Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(
                folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    return write_domains(tmp_path_factory.mktemp("domains"),
                         {"trainA": 20, "trainB": 16, "testA": 3, "testB": 5})


def smoke_config(root: Path, **overrides) -> ml_collections.ConfigDict:
    """The smoke config on the test's domains, batch 8 (one image per forced device)."""
    c = cyclegan_base.get_config("smoke")
    for section in (c.data.a, c.data.b):
        section.path, section.tfds_name = str(root), ""
    c.batch_size = 8
    return apply_overrides(c, overrides)


def fake_batch(config, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.model.image_size, config.model.image_size,
             config.model.channels)
    return {name: {"image": rng.uniform(-1, 1, shape).astype(np.float32)} for name in "ab"}


# ----------------------------------------------------------------------------- networks


def test_reference_networks_at_256_pixels_have_the_reference_parameter_counts():
    g, d = ResnetGenerator(channels=3, width=64, num_blocks=9), PatchDiscriminator(width=64)
    x = jnp.zeros((2, 256, 256, 3))
    g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), x))
    d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x))
    # The PyTorch reference: ResnetGenerator(3, 3, 64, InstanceNorm2d, n_blocks=9) has
    # 11,378,179 and NLayerDiscriminator(3, 64, n_layers=3, InstanceNorm2d) 2,764,737, both
    # without norm parameters. Ours leave out the biases of the convs that feed a norm (which
    # cancels them): one per output channel of those convs.
    g_dead = 64 + 128 + 256 + 9 * 2 * 256 + 128 + 64
    d_dead = 128 + 256 + 512
    assert count(g_vars["params"]) == 11_378_179 - g_dead == 11_372_931
    assert count(d_vars["params"]) == 2_764_737 - d_dead == 2_763_841
    # with norm "none" every conv keeps its bias: the reference's trees exactly
    for module, reference in ((ResnetGenerator(channels=3, norm="none"), 11_378_179),
                              (PatchDiscriminator(norm="none"), 2_764_737)):
        variables = jax.eval_shape(lambda m=module: m.init(jax.random.PRNGKey(0), x))
        assert count(variables["params"]) == reference
    assert set(g_vars) == set(d_vars) == {"params"}  # no running statistics anywhere
    assert jax.eval_shape(g.apply, g_vars, x).shape == (2, 256, 256, 3)
    assert jax.eval_shape(d.apply, d_vars, x).shape == (2, 30, 30, 1)  # 70x70 patches


def test_generator_output_is_in_range_and_discriminator_sizes_are_checked():
    g = ResnetGenerator(channels=1, width=4, num_blocks=1)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1)) * 3
    y = g.apply(g.init(jax.random.PRNGKey(1), x), x)
    assert y.shape == x.shape and float(jnp.abs(y).max()) <= 1.0
    with pytest.raises(UserError, match="d_layers to 2 or less"):
        PatchDiscriminator(width=4, num_layers=3).init(jax.random.PRNGKey(0), x)
    with pytest.raises(UserError, match="multiple of 4"):
        g.init(jax.random.PRNGKey(0), jnp.zeros((1, 18, 18, 1)))


def test_instance_norm_uses_each_images_own_statistics_in_training_and_inference():
    g = ResnetGenerator(channels=3, width=4, num_blocks=1)
    images = jax.random.uniform(jax.random.PRNGKey(0), (3, 16, 16, 3), minval=-1, maxval=1)
    variables = g.init(jax.random.PRNGKey(1), images)
    together = g.apply(variables, images)
    alone = g.apply(variables, images[:1])
    with_other = g.apply(variables, jnp.stack([images[0], 5 * images[2]]))
    # the image's own statistics: neither the batch size nor the other images matter
    np.testing.assert_allclose(alone[0], together[0], atol=1e-6)
    np.testing.assert_allclose(with_other[0], together[0], atol=1e-6)
    # and the norms have no parameters and no state (the call takes no train flag)
    norm = jax.tree_util.tree_flatten_with_path(variables)[0]
    assert not [p for p, _ in norm if "norm" in jax.tree_util.keystr(p)]


def test_subpixel_transpose3_equals_xlas_transposed_convolution():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 3))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    np.testing.assert_allclose(conv_transpose_3x3(x, k, impl="subpixel"),
                               conv_transpose_3x3(x, k), atol=1e-5)

    def grads(impl):
        def loss(x, k):
            return jnp.sum(jnp.sin(conv_transpose_3x3(x, k, impl=impl)))

        return jax.grad(loss, argnums=(0, 1))(x, k)

    for a, b in zip(grads("subpixel"), grads("xla"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- losses, pool


def test_adversarial_terms_follow_the_reference_weighting():
    real = jnp.array([[0.5, 2.0], [1.0, -1.0]])[..., None]  # [B, h, w, 1] patch logits
    fake = jnp.array([[0.0, 1.5], [-0.5, 0.25]])[..., None]
    mse = lambda x, t: float(jnp.mean((x - t) ** 2))  # noqa: E731
    np.testing.assert_allclose(cyclegan.generator_adversarial("lsgan", fake), mse(fake, 1.0),
                               rtol=1e-6)
    np.testing.assert_allclose(cyclegan.discriminator_adversarial("lsgan", real, fake, 1.0),
                               0.5 * (mse(real, 1.0) + mse(fake, 0.0)), rtol=1e-6)
    bce = lambda x, t: float(jnp.mean(jnp.logaddexp(0, x) - t * x))  # noqa: E731
    np.testing.assert_allclose(
        cyclegan.discriminator_adversarial("non_saturating", real, fake, 1.0),
        0.5 * (bce(real, 1.0) + bce(fake, 0.0)), rtol=1e-6)


class ReferencePool:
    """The reference implementation's ImagePool.query, one image at a time, with the coins and
    slots given instead of drawn."""

    def __init__(self, size):
        self.size, self.images = size, []

    def query(self, fakes, coins, slots):
        out = []
        for fake, coin, slot in zip(fakes, coins, slots, strict=True):
            if len(self.images) < self.size:
                self.images.append(fake)
                out.append(fake)
            elif coin > 0.5:
                out.append(self.images[slot])
                self.images[slot] = fake
            else:
                out.append(fake)
        return np.stack(out)


def test_pool_follows_the_reference_rule():
    size, rng = 5, np.random.default_rng(0)
    pool, reference = cyclegan.empty_pool(size, 2, 1), ReferencePool(size)
    query = jax.jit(cyclegan.query_pool)
    swapped = 0
    for _ in range(6):  # fills in the second batch, then swaps
        fakes = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
        coins, slots = rng.uniform(size=3), rng.integers(0, size, 3)
        pool, out = query(pool, fakes, coins, slots)
        expected = reference.query(list(fakes), coins, slots)
        np.testing.assert_array_equal(out, expected)
        swapped += int(not np.array_equal(out, fakes))
        assert int(pool.count) == len(reference.images)
    np.testing.assert_array_equal(pool.images, np.stack(reference.images))
    assert swapped > 0  # stored images were handed back


def test_pool_of_size_zero_returns_the_fakes():
    fakes = jnp.ones((2, 4, 4, 3))
    pool, out = cyclegan.query_pool(cyclegan.empty_pool(0, 4, 3), fakes, jnp.ones(2),
                                    jnp.zeros(2, jnp.int32))
    assert out is fakes and pool.images.shape == (0, 4, 4, 3)


# ----------------------------------------------------------------------------- the step


def run_steps(config, mode: str, num_devices: int, num_steps: int):
    """num_steps compiled steps under a retrace guard; (host state, metrics of each step)."""
    dp = DataParallel(mode, jax.devices()[:num_devices])
    frozen = ml_collections.FrozenConfigDict(config)

    @chex.assert_max_traces(n=1)  # a second trace would mean a recompilation
    def step_fn(state, batch):
        return cyclegan.train_step(state, batch, config=frozen)

    compiled = dp.compile(step_fn, donate=False)
    state = dp.put_state(cyclegan.create_state(config))
    history = []
    for i in range(num_steps):
        state, metrics = compiled(state, dp.put_batch(fake_batch(config, seed=i)))
        history.append(dp.get_metrics(metrics))
    return jax.device_get(dp.get_state(state)), history


def assert_close_to_leaf_scale(got, want, rtol=1e-4, scale_atol=1e-3):
    """Every leaf within rtol of `want` plus scale_atol of the leaf's largest value.

    Eight devices sum the gradients in another order than one, and over three GAN steps Adam
    turns that float32 noise into whole learning-rate steps wherever a gradient is near zero.
    With XLA's convolutions or oneDNN's (measured on an Intel Xeon) the two states differ by up
    to 1.2e-4 of a leaf's largest value; a fixed atol of 1e-5 failed on Adam's first moments.
    A real fault (a shard left out of a mean, a pool swapped differently) moves whole leaves.
    """
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.size == 0 or not np.issubdtype(b.dtype, np.floating):
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
            continue
        np.testing.assert_allclose(a, b, rtol=rtol, atol=scale_atol * np.abs(b).max(),
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_eight_devices_compute_what_one_device_computes_pool_included(domains, mode):
    # Pool of 6 and global batches of 8: full within the first step, swapping afterwards.
    config = smoke_config(domains, pool_size=6)
    chex.clear_trace_counter()
    one, one_history = run_steps(config, mode, 1, num_steps=3)
    chex.clear_trace_counter()
    eight, eight_history = run_steps(config, mode, 8, num_steps=3)
    for one_metrics, eight_metrics in zip(one_history, eight_history, strict=True):
        for key, value in one_metrics.items():
            np.testing.assert_allclose(eight_metrics[key], value, rtol=1e-4, atol=1e-5,
                                       err_msg=key)
    assert int(eight.pool_a.count) == int(eight.pool_b.count) == 6
    assert_close_to_leaf_scale(eight, one)
    # the pools really hold fakes (not zeros) and the step changed every network
    assert np.all(np.abs(eight.pool_b.images).mean(axis=(1, 2, 3)) > 0)
    fresh = cyclegan.create_state(config)
    for net in ("g_ab", "g_ba", "d_a", "d_b"):
        before, after = (getattr(s, net).params for s in (fresh, eight))
        assert not jax.tree.all(jax.tree.map(np.allclose, before, after)), net
    assert {"cycle_a", "cycle_b", "idt_a", "idt_b", "change_ab", "change_ba", "g_adv_ab",
            "d_a_loss", "d_b_loss", "lr", "finite"} <= set(one_history[-1])


# ----------------------------------------------------------------------------- runs


def final_state(workdir: Path, config):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    state, meta = checkpointer.restore(checkpointer.steps()[-1],
                                       jax.eval_shape(lambda: cyclegan.create_state(config)))
    checkpointer.close()
    return jax.device_get(state), meta


def test_smoke_run_writes_grids_checkpoints_and_summary(domains, tmp_path):
    summary = cyclegan.train_and_evaluate(smoke_config(domains), tmp_path)
    assert summary["final_step"] == 6 and summary["images_per_s"] > 0
    for name in ("a2b_final.png", "b2a_final.png", "samples/a2b_0000003.png",
                 "samples/b2a_0000006.png", "losses.png", "summary.json", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    # rows A | G(A) | F(G(A)): 3 test images of A, 3 columns of 96-pixel cells (16 x 6)
    grid = np.asarray(Image.open(tmp_path / "a2b_final.png"))
    assert grid.shape[:2] == (3 * 98 + 2 + 4, 3 * 98 + 2 + 4)
    final = json.loads((tmp_path / "summary.json").read_text())["final_metrics"]
    assert {"checkerboard_a2b", "checkerboard_b2a", "cycle_a", "d_b_loss"} <= set(final)
    _, meta = final_state(tmp_path, smoke_config(domains))
    assert meta["data"]["streams"] == {"a": {"examples": 48}, "b": {"examples": 48}}


def test_resumed_run_equals_the_uninterrupted_run_bitwise(domains, tmp_path):
    # trainB has 16 images: 2 steps per epoch of B, so both halves cross epoch boundaries
    config = smoke_config(domains, num_steps=6, checkpoint_every=0, sample_every=0)
    cyclegan.train_and_evaluate(config, tmp_path / "straight")
    cyclegan.train_and_evaluate(smoke_config(domains, num_steps=3, checkpoint_every=0,
                                             sample_every=0), tmp_path / "resumed")
    summary = cyclegan.train_and_evaluate(config, tmp_path / "resumed")
    assert summary["start_step"] == 3 and summary["final_step"] == 6
    straight, _ = final_state(tmp_path / "straight", config)
    resumed, _ = final_state(tmp_path / "resumed", config)
    assert int(resumed.pool_a.count) == 4  # the smoke config's pool, filled
    chex.assert_trees_all_equal(resumed, straight)


def test_translate_is_per_image_and_checks_its_input(domains):
    config = smoke_config(domains)
    state = cyclegan.create_state(config)
    images = np.random.default_rng(0).uniform(-1, 1, (19, 16, 16, 3)).astype(np.float32)
    out = cyclegan.translate(state, images, config, direction="b2a")
    assert out.shape == images.shape and out.dtype == np.float32
    g = cyclegan.make_generator(config)
    direct = g.apply({"params": state.g_ba.params}, images[17:])
    np.testing.assert_allclose(out[17:], direct, atol=1e-5)  # the padded last batch
    with pytest.raises(UserError, match="unknown direction 'a2c'"):
        cyclegan.translate(state, images, config, direction="a2c")
    with pytest.raises(UserError, match=r"images \[N, S, S, 3\]"):
        cyclegan.translate(state, images[..., :1], config)


def test_shipped_configs_pass_the_start_up_checks():
    for module in (cyclegan_base, cyclegan_facemask, cyclegan_fer2anime):
        for variant in (None, "smoke"):
            config = module.get_config(variant)
            check_choices(config, cyclegan.CONFIG_CHOICES)
            cyclegan.make_task(config)  # the sizes fit the networks
    with pytest.raises(UserError, match="CycleGAN configs have: smoke"):
        cyclegan_base.get_config("tiny")
    too_small = apply_overrides(cyclegan_base.get_config("smoke"),
                                {"model.image_size": 8, "model.d_layers": 2})
    with pytest.raises(UserError, match="d_layers to 1 or less"):
        cyclegan.make_task(too_small)


def run_cli(*args, timeout=300):
    # compiling with few XLA optimisations, as conftest does in-process: the flow is tested
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def last_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_train_py_translate_end_to_end(domains, tmp_path):
    workdir = tmp_path / "run"
    cyclegan.train_and_evaluate(smoke_config(domains, num_steps=2, sample_every=0), workdir)
    inputs = [domains / "testB" / "000.png", domains / "testB" / "001.png",
              tmp_path / "other" / "000.png"]  # the same name twice
    inputs[2].parent.mkdir()
    inputs[2].write_bytes(inputs[0].read_bytes())
    out = tmp_path / "out"
    result = run_cli("translate", f"--workdir={workdir}", "--direction=b2a", *inputs,
                     f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "translated 3 images b2a" in result.stdout
    written = sorted(p.name for p in out.iterdir())
    assert written == ["000_2_b2a.png", "000_b2a.png", "001_b2a.png"]
    image = np.asarray(Image.open(out / "001_b2a.png"))
    assert image.shape == (16, 16, 3)
    expected = cyclegan.translate_files(final_state(workdir, smoke_config(domains))[0],
                                        smoke_config(domains), [inputs[1]], tmp_path / "api",
                                        direction="b2a")
    np.testing.assert_array_equal(np.asarray(Image.open(expected[0])), image)


def test_train_py_translate_errors_are_one_line(domains, tmp_path):
    image = domains / "testA" / "000.png"
    assert "image file not found: " in last_error(
        run_cli("translate", f"--workdir={tmp_path}", tmp_path / "missing.png"))
    assert "unknown direction 'sideways'" in last_error(
        run_cli("translate", f"--workdir={tmp_path}", "--direction=sideways", image))
    assert "translate needs image files" in last_error(
        run_cli("translate", f"--workdir={tmp_path}"))
    # a run of another family: a DCGAN checkpoint
    from gans_jax.trainers import dcgan
    from tests.helpers import smoke_config as dcgan_smoke
    from tests.helpers import tiny_digits

    dcgan_run = tmp_path / "dcgan"
    dcgan.train_and_evaluate(dcgan_smoke(tiny_digits(tmp_path / "digits"), num_steps=1),
                             dcgan_run)
    message = last_error(run_cli("translate", f"--workdir={dcgan_run}", image))
    assert "gans_jax.trainers.dcgan run, which does not translate" in message
