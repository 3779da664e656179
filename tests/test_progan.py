"""ProGAN: the fade-in of both networks against the previous stage's network, the equalized
layers, one compilation per stage with alpha traced, the schedule and its refusals, a run
stopped mid-fade and resumed (bitwise), and `train.py sample` / `--growth` on a ProGAN run."""

from __future__ import annotations

import collections
import json
import os
import shutil
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
from common_jax.config_utils import apply_overrides
from common_jax.errors import UserError
from gans_jax.configs import progan_anime, progan_base, progan_celeba_hq
from gans_jax.models import progan as models
from gans_jax.trainers import progan

ROOT = Path(__file__).resolve().parents[1]
Z_DIM = 8


def write_faces(folder: Path, n: int, size: int) -> Path:
    """n random RGB PNGs of size x size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_faces(tmp_path_factory.mktemp("faces"), 40, 16)


def smoke_config(data: Path, **overrides) -> ml_collections.ConfigDict:
    """4 -> 8 -> 16, batch 8: 2 steps at 4x4, then 2 fade + 2 stable steps at 8 and at 16."""
    c = progan_anime.get_config("smoke")
    c.data.path = str(data)
    return apply_overrides(c, overrides)


# ----------------------------------------------------------------------------- the networks


def networks(final: int = 16):
    g = models.Generator(image_size=final, channels=3, fmap_base=32, max_channels=16)
    d = models.Discriminator(image_size=final, fmap_base=32, max_channels=16)
    z = jax.random.normal(jax.random.PRNGKey(0), (8, Z_DIM))
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, final, final, 3), minval=-1, maxval=1)
    g_params = g.init(jax.random.PRNGKey(2), z[:1], resolution=final)["params"]
    d_params = d.init(jax.random.PRNGKey(3), x[:1], resolution=final)["params"]
    return g, d, g_params, d_params, z, x


def perturbed(params, name: str):
    """The parameters with one layer's kernel and bias replaced by other values."""
    out = jax.tree.map(lambda p: p, params)
    out[name] = jax.tree.map(lambda p: p + 3.0 * jnp.ones_like(p), params[name])
    return out


def test_every_resolution_has_its_parameters_from_the_start():
    _, _, g_params, d_params, _, _ = networks(16)
    for r in (4, 8, 16):
        assert f"to_rgb{r}" in g_params and f"from_rgb{r}" in d_params
    assert {"conv8_up", "conv16_up", "dense4"} <= set(g_params)
    assert {"conv16_down", "conv8_down", "score"} <= set(d_params)
    # the paper's widths: 512 up to 32x32, then halving down to 16 at 1024x1024
    assert [models.channels_at(r, 8192, 512) for r in models.resolutions(1024)] == [
        512, 512, 512, 512, 256, 128, 64, 32, 16]


@pytest.mark.parametrize("resolution", [8, 16])
def test_generator_at_alpha_0_is_the_previous_generator_upsampled(resolution):
    g, _, params, _, z, _ = networks()
    grown = g.apply({"params": params}, z, resolution=resolution, alpha=0.0)
    previous = g.apply({"params": params}, z, resolution=resolution // 2, alpha=1.0)
    assert grown.shape == (8, resolution, resolution, 3)
    np.testing.assert_allclose(grown, models.upsample(previous), rtol=1e-6, atol=1e-6)
    # and the new block does not count yet
    new = perturbed(params, f"to_rgb{resolution}")
    np.testing.assert_allclose(g.apply({"params": new}, z, resolution=resolution, alpha=0.0),
                               grown, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("resolution", [8, 16])
def test_discriminator_at_alpha_0_is_the_previous_discriminator_on_the_pooled_image(
        resolution):
    _, d, _, params, _, x = networks()
    x = x if resolution == 16 else models.downsample(x)
    grown = d.apply({"params": params}, x, resolution=resolution, alpha=0.0)
    previous = d.apply({"params": params}, models.downsample(x), resolution=resolution // 2,
                       alpha=1.0)
    assert grown.shape == (8,)
    np.testing.assert_allclose(grown, previous, rtol=1e-6, atol=1e-6)
    new = perturbed(params, f"from_rgb{resolution}")
    np.testing.assert_allclose(d.apply({"params": new}, x, resolution=resolution, alpha=0.0),
                               grown, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("resolution", [8, 16])
def test_at_alpha_1_only_the_new_path_counts(resolution):
    g, d, g_params, d_params, z, x = networks()
    x = x if resolution == 16 else models.downsample(x)
    old = resolution // 2
    g_old, d_old = perturbed(g_params, f"to_rgb{old}"), perturbed(d_params, f"from_rgb{old}")

    def both(gp, dp, alpha):
        return (g.apply({"params": gp}, z, resolution=resolution, alpha=alpha),
                d.apply({"params": dp}, x, resolution=resolution, alpha=alpha))

    for a, b in zip(both(g_params, d_params, 1.0), both(g_old, d_old, 1.0), strict=True):
        np.testing.assert_array_equal(a, b)
    # mid-fade both paths count: the old layers change both outputs
    for a, b in zip(both(g_params, d_params, 0.5), both(g_old, d_old, 0.5), strict=True):
        assert not np.allclose(a, b)


def test_reals_are_faded_like_the_generator():
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
    np.testing.assert_array_equal(models.fade_reals(x, 1.0), x)
    blurred = models.upsample(models.downsample(x))
    np.testing.assert_array_equal(models.fade_reals(x, 0.0), blurred)
    np.testing.assert_allclose(models.fade_reals(x, 0.25), 0.75 * blurred + 0.25 * x, atol=1e-6)
    assert float(jnp.abs(blurred[:, 0, 0] - blurred[:, 1, 1]).max()) == 0.0  # 2x2 blocks


def test_equalized_layers_store_unit_normal_weights_and_scale_them_at_run_time():
    conv = models.EqualizedConv(32, kernel_size=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
    params = conv.init(jax.random.PRNGKey(1), x)["params"]
    assert abs(float(params["kernel"].std()) - 1.0) < 0.05
    expected = jax.lax.conv_general_dilated(
        x, params["kernel"] * np.sqrt(2.0 / (9 * 16)), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply({"params": params}, x), expected, atol=1e-5)
    dense = models.EqualizedDense(4, gain=1.0)
    v = jnp.ones((1, 25))
    p = dense.init(jax.random.PRNGKey(2), v)["params"]
    np.testing.assert_allclose(dense.apply({"params": p}, v), v @ p["kernel"] / 5.0, atol=1e-5)


def test_minibatch_stddev_uses_groups_of_consecutive_examples():
    x = jnp.concatenate([jnp.zeros((4, 2, 2, 3)), jnp.arange(4.0)[:, None, None, None]
                         * jnp.ones((4, 2, 2, 3))])
    out = models.minibatch_stddev(x, 4)
    assert out.shape == (8, 2, 2, 4)
    np.testing.assert_allclose(out[:4, ..., 3], 1e-4, atol=1e-4)  # a constant group
    np.testing.assert_allclose(out[4:, ..., 3], np.std(np.arange(4.0)), rtol=1e-4)
    with pytest.raises(UserError, match="multiple of model.mbstd_group=4"):
        models.minibatch_stddev(jnp.zeros((6, 2, 2, 3)), 4)


# ----------------------------------------------------------------------------- the step


def test_schedule_derives_the_steps_and_refuses_lists_that_do_not_add_up(faces):
    phases = progan.schedule(smoke_config(faces))
    assert [(p.resolution, p.fade_steps, p.stable_steps, p.start) for p in phases] == [
        (4, 0, 2, 0), (8, 2, 2, 2), (16, 2, 2, 6)]
    assert progan.resolved(smoke_config(faces)).num_steps == 10
    anime = progan.resolved(progan_anime.get_config())
    assert anime.num_steps == 9 * 625  # 10,000 images per phase at batch 16
    assert progan_anime.IMAGES_PER_PHASE * 80 == progan_base.PAPER_IMAGES_PER_PHASE
    # a phase of a batch and a half takes two steps (the images are rounded up to steps)
    assert progan.schedule(smoke_config(faces, **{"schedule.stable_images": [12, 16, 16]}))[
        0].stable_steps == 2
    wrong = {
        "model.image_size": (48, "not a ProGAN resolution: it must be 4 \\* 2\\*\\*k"),
        "schedule.batch_sizes": ([8, 8], "batch_sizes has 2 entries but growing to 16x16 "
                                         "needs 3 \\(one per resolution 4, 8, 16\\)"),
        "schedule.fade_images": ([16, 16, 16], "fade_images has 3 entries .* needs 2"),
        "schedule.stable_images": ([16, 0, 16], "stable_images holds 0; every entry must be"),
        "num_steps": (11, "num_steps 11 is more than the schedule's 10 steps"),
        "model.mbstd_group": (0, "model.mbstd_group must be at least 1, got 0"),
    }
    for key, (value, message) in wrong.items():
        with pytest.raises(UserError, match=message):
            progan.train_and_evaluate(smoke_config(faces, **{key: value}), "/nonexistent")


def test_data_smaller_than_the_final_resolution_is_refused(tmp_path):
    small = write_faces(tmp_path / "small", 8, 8)
    with pytest.raises(UserError, match="8 pixels on their shorter side, smaller than the "
                                        "final resolution 16"):
        progan.train_and_evaluate(smoke_config(small), tmp_path / "run")


def test_shipped_configs_resolve_their_schedules():
    for module in (progan_anime, progan_celeba_hq):
        for variant in (None, "smoke"):
            config = progan.resolved(module.get_config(variant))
            assert config.num_steps > 0
    celeba = progan_celeba_hq.get_config()
    assert celeba.model.image_size in (256, 1024) and celeba.data.tfds_name
    with pytest.raises(UserError, match="ProGAN configs have: smoke"):
        progan_anime.get_config("tiny")


# ----------------------------------------------------------------------------- runs


def final_state(workdir: Path, config):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    state, meta = checkpointer.restore(checkpointer.steps()[-1],
                                       jax.eval_shape(lambda: progan.create_state(config)))
    checkpointer.close()
    return jax.device_get(state), meta


@pytest.fixture(scope="module")
def straight_run(faces, tmp_path_factory):
    """The whole smoke schedule uninterrupted, metrics logged every step, checkpoints at steps
    3, 6, 9 and 10, and the traces of the step counted per resolution (the body of a jitted
    function runs only while tracing)."""
    workdir = tmp_path_factory.mktemp("straight")
    traces = collections.Counter()
    original = progan.train_step

    def counted(state, batch, *, config, phase):
        traces[phase.resolution] += 1
        return original(state, batch, config=config, phase=phase)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(progan, "train_step", counted)
        summary = progan.train_and_evaluate(smoke_config(
            faces, log_every=1, checkpoint_every=3, keep_checkpoints=5), workdir)
    return workdir, summary, traces


def test_each_stage_compiles_once_with_alpha_computed_from_the_step(straight_run, faces):
    workdir, _, traces = straight_run
    assert traces == {4: 1, 8: 1, 16: 1}
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if '"alpha"' in line]
    # alpha: 0 at a stage's first step, linear over its fade, 1 while it stabilises
    assert [(r["step"], r["resolution"], r["alpha"]) for r in records] == [
        (1, 4, 1), (2, 4, 1), (3, 8, 0), (4, 8, 0.5), (5, 8, 1), (6, 8, 1),
        (7, 16, 0), (8, 16, 0.5), (9, 16, 1), (10, 16, 1)]
    state, _ = final_state(workdir, progan.resolved(smoke_config(faces)))
    fresh = progan.create_state(smoke_config(faces))
    for layer in ("to_rgb4", "to_rgb8", "conv16", "to_rgb16"):  # every stage trained G
        assert not np.allclose(state.g.params[layer]["kernel"], fresh.g.params[layer]["kernel"])
    assert not np.allclose(state.d.params["from_rgb16"]["kernel"],
                           fresh.d.params["from_rgb16"]["kernel"])


def test_run_writes_grids_per_resolution_the_growth_strip_and_metrics(straight_run):
    workdir, summary, _ = straight_run
    assert summary["final_step"] == 10
    for name in ("samples/samples_8x8_0000004.png", "samples/samples_16x16_0000008.png",
                 "samples_16x16_final.png", "growth.png", "losses.png", "summary.json"):
        assert (workdir / name).is_file(), name
    final = summary["final_metrics"]
    assert {"d_loss", "g_loss", "gradient_penalty", "drift", "alpha", "resolution",
            "checkerboard"} <= set(final)
    assert final["resolution"] == 16 and final["alpha"] == 1
    strip = np.asarray(Image.open(workdir / "growth.png"))
    # 8 rows of z, 3 columns (4, 8, 16), cells of 16 pixels enlarged 4x
    assert strip.shape == (4 * (8 * 18 + 2), 4 * (3 * 18 + 2), 3)


def test_run_stopped_mid_fade_and_resumed_equals_the_uninterrupted_run(faces, straight_run,
                                                                       tmp_path):
    # The straight run's checkpoint at step 3 (after the first fade step at 8x8: alpha 0, the
    # next 0.5), alone in a workdir as a run stopped there leaves it; resuming also crosses the
    # 16x16 stage's start, where Adam's moments are reset.
    workdir, _, _ = straight_run
    config = smoke_config(faces)
    shutil.copytree(workdir / "checkpoints" / "3", tmp_path / "checkpoints" / "3")
    stopped, meta = final_state(tmp_path, progan.resolved(config))
    assert int(stopped.step) == 3 and meta["data"]["streams"] == {"train": {"examples": 24}}
    summary = progan.train_and_evaluate(config, tmp_path)
    assert summary["start_step"] == 3 and summary["final_step"] == 10
    straight, _ = final_state(workdir, progan.resolved(config))
    resumed, meta = final_state(tmp_path, progan.resolved(config))
    assert meta["data"]["streams"] == {"train": {"examples": 80}}
    chex.assert_trees_all_equal(resumed, straight)


def run_cli(*args, timeout=300):
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_train_py_samples_a_progan_run_and_its_growth_strip(straight_run, tmp_path):
    workdir, _, _ = straight_run
    result = run_cli("sample", f"--workdir={workdir}", "--num=4", f"--out={tmp_path / 's.png'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 4 samples from step 10" in result.stdout
    # 16x16 samples (the final resolution), enlarged 8x for display
    assert np.asarray(Image.open(tmp_path / "s.png")).shape == (8 * 38, 8 * 38, 3)
    result = run_cli("sample", f"--workdir={workdir}", "--growth", "--num=2",
                     f"--out={tmp_path / 'g.png'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "growth strip of 2 samples" in result.stdout
    assert np.asarray(Image.open(tmp_path / "g.png")).shape == (4 * 38, 4 * 56, 3)


def test_train_py_refuses_a_bad_schedule_in_one_line(faces, tmp_path):
    config = ROOT / "gans_jax" / "configs" / "progan_anime.py"
    result = run_cli(f"--config={config}:smoke", f"--workdir={tmp_path}",
                     f"--config.data.path={faces}", "--config.model.image_size=32")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "schedule.batch_sizes has 3 entries but growing to 32x32 needs 4" in (
        result.stderr.strip().splitlines()[-1])


def test_benchmark_times_the_step_at_each_resolution_beside_its_torch_twin(tmp_path):
    from benchmarks import common, torch_baselines, train_step

    names = [f"progan_anime_{r}" for r in (4, 8, 16, 32, 64)]
    assert set(names) <= set(common.REGISTRY)
    record = train_step.main(["--tiny", "--out", str(tmp_path), "--tag", "test", "--only",
                              "progan_anime_16", "--no-torch-compile", "--devices", "2",
                              "--channels-last", "off", "--repeats", "1"])
    entry = record["results"]["progan_anime_16"]
    assert entry["config"].endswith("progan_anime.py:at16+smoke")
    assert entry["batch"] == 8 and entry["image_shape"] == [16, 16, 3]
    assert entry["jax"]["images_per_s"] > 0 and entry["jax"]["flops_per_step"] > 0
    assert entry["input"]["skipped"].startswith("skipped: one input pipeline per resolution")
    if common.import_torch() is None:
        assert entry["torch"] == torch_baselines.NOT_INSTALLED
        return
    from benchmarks import torch_models

    assert entry["torch_eager"]["images_per_s"] > 0
    for name in names:  # the twins hold every resolution's layers, as the Flax state does
        config = common.load_config(common.REGISTRY[name])
        state = jax.eval_shape(lambda c=config: progan.create_state(c))
        twins = torch_models.twins_from_config(config)
        for net in ("g", "d"):
            flax_sizes = sorted(int(np.prod(x.shape))
                                for x in jax.tree.leaves(getattr(state, net).params))
            assert sorted(p.numel() for p in twins[net].parameters()) == flax_sizes, (name, net)
    entry["params"] = entry["jax"]["params"]
    config = common.load_config(entry["config"])
    assert entry["params"] == {k: torch_models.count_parameters(v)
                               for k, v in torch_models.twins_from_config(config).items()}
