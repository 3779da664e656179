"""The DCGAN train step and loop: parallel modes, device-count equality, resume, bad input."""

import json

import chex
import jax
import ml_collections
import numpy as np
import pytest

from common_jax.checkpoint import Checkpointer
from common_jax.errors import UserError
from common_jax.loop import TrainingDiverged
from common_jax.parallel import DataParallel
from gans_jax.trainers import dcgan
from tests.helpers import smoke_config, tiny_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return tiny_digits(tmp_path_factory.mktemp("digits"))


def fake_batch(config, seed=0):
    rng = np.random.RandomState(seed)
    shape = (config.batch_size, config.model.image_size, config.model.image_size,
             config.model.channels)
    return {"image": rng.uniform(-1, 1, shape).astype(np.float32),
            "label": np.zeros(config.batch_size, np.int32)}


def run_steps(config, mode, num_devices, num_steps=2):
    """num_steps compiled steps under a retrace guard; returns (host state, last metrics)."""
    dp = DataParallel(mode, jax.devices()[:num_devices])
    frozen = ml_collections.FrozenConfigDict(config)

    @chex.assert_max_traces(n=1)  # a second trace would mean a recompilation
    def step_fn(state, batch):
        return dcgan.train_step(state, batch, config=frozen)

    compiled = dp.compile(step_fn, donate=False)
    state = dp.put_state(dcgan.create_state(config))
    for i in range(num_steps):
        state, metrics = compiled(state, dp.put_batch(fake_batch(config, seed=i)))
    return dp.get_state(state), dp.get_metrics(metrics)


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_eight_devices_compute_what_one_device_computes(digits, mode):
    chex.clear_trace_counter()
    config = smoke_config(digits)
    one_state, one_metrics = run_steps(config, mode, 1)
    chex.clear_trace_counter()
    eight_state, eight_metrics = run_steps(config, mode, 8)
    assert int(eight_state.step) == 2
    for key in one_metrics:
        np.testing.assert_allclose(eight_metrics[key], one_metrics[key], rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(jax.device_get(eight_state), jax.device_get(one_state),
                                rtol=1e-4, atol=1e-5)
    # the step really changed the weights (an equality of two no-ops would prove nothing)
    fresh = dcgan.create_state(config)
    assert not np.allclose(eight_state.g.params["project"]["kernel"],
                           fresh.g.params["project"]["kernel"])


def test_batch_size_the_devices_cannot_share_is_refused():
    with pytest.raises(UserError, match="not divisible by the 8 devices.*multiple of 8"):
        DataParallel("shard_map").check_batch_size(12)


def test_unknown_parallel_mode_is_refused():
    with pytest.raises(UserError, match="shard_map, pmap"):
        DataParallel("threads")


def final_state(workdir, config):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    state, meta = checkpointer.restore(checkpointer.steps()[-1],
                                       jax.eval_shape(lambda: dcgan.create_state(config)))
    checkpointer.close()
    return jax.device_get(state), meta


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_resumed_run_equals_uninterrupted_run_bitwise(digits, tmp_path, mode):
    # 96 images, batch 16: 6 steps per epoch, so the resumed half crosses an epoch boundary.
    config = smoke_config(digits, num_steps=8, checkpoint_every=100, parallel=mode)
    dcgan.train_and_evaluate(config, tmp_path / "straight")
    half = smoke_config(digits, num_steps=4, checkpoint_every=100, parallel=mode)
    dcgan.train_and_evaluate(half, tmp_path / "resumed")
    summary = dcgan.train_and_evaluate(config, tmp_path / "resumed")
    assert summary["start_step"] == 4 and summary["final_step"] == 8
    straight, _ = final_state(tmp_path / "straight", config)
    resumed, meta = final_state(tmp_path / "resumed", config)
    assert meta["data"]["streams"] == {"train": {"examples": 8 * 16}}
    chex.assert_trees_all_equal(resumed, straight)


def test_run_writes_samples_plot_summary_and_tensorboard(digits, tmp_path):
    summary = dcgan.train_and_evaluate(smoke_config(digits), tmp_path)
    assert summary["final_step"] == 6 and summary["images_per_s"] > 0
    for name in ["samples_final.png", "losses.png", "summary.json", "metrics.jsonl",
                 "samples/samples_0000003.png", "samples/samples_0000006.png"]:
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").iterdir())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().split("\n")
               if line]
    losses = [r for r in records if "d_loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6]
    checkerboard = [r for r in records if "checkerboard" in r]
    assert [r["step"] for r in checkerboard] == [3, 6]  # every sample grid, and the final one
    assert {"d_loss", "g_loss", "d_real", "d_fake", "g_grad_norm", "d_grad_norm"} <= set(
        losses[0])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved["final_metrics"]) >= {"d_loss", "g_loss", "checkerboard"}


def test_checkpoint_from_a_different_config_is_refused_unless_allowed(digits, tmp_path):
    dcgan.train_and_evaluate(smoke_config(digits, num_steps=3), tmp_path)
    changed = smoke_config(digits, num_steps=4, **{"model.g_width": 16})
    with pytest.raises(UserError, match=r"different config \(model.g_width: 8 -> 16\)"):
        dcgan.train_and_evaluate(changed, tmp_path)
    # a longer run of the same config is not a different config
    assert dcgan.train_and_evaluate(smoke_config(digits, num_steps=4), tmp_path)[
        "start_step"] == 3


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(digits, tmp_path, caplog):
    dcgan.train_and_evaluate(smoke_config(digits, num_steps=6), tmp_path)  # saves 3 and 6
    for path in (tmp_path / "checkpoints" / "6" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    summary = dcgan.train_and_evaluate(smoke_config(digits, num_steps=6), tmp_path)
    assert summary["start_step"] == 3 and summary["final_step"] == 6
    assert (tmp_path / "corrupt_checkpoints" / "6").is_dir()  # kept, not deleted
    assert "unreadable" in caplog.text


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    dcgan.train_and_evaluate(smoke_config(digits, num_steps=3), tmp_path)
    broken = smoke_config(digits, num_steps=6, allow_config_change=True,
                          **{"optimizer.d_lr": float("nan")})
    with pytest.raises(TrainingDiverged, match="diverged at step 4.*last good checkpoint is "
                                               "step 3"):
        dcgan.train_and_evaluate(broken, tmp_path)
    checkpointer = Checkpointer(tmp_path, asynchronous=False)
    assert checkpointer.steps() == [3]
    checkpointer.close()


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_eight_devices_equal_one_device_with_the_gradient_penalty(digits, mode):
    # WGAN-GP as the paper runs it: no batch norm in the critic (layer norm instead). The
    # interpolation weights are drawn for the global batch, so the penalty is the same.
    config = smoke_config(digits, **{"loss.kind": "wasserstein", "loss.gradient_penalty": 10.0,
                                     "model.d_norm": "layer", "n_critic": 1})
    chex.clear_trace_counter()
    one_state, one_metrics = run_steps(config, mode, 1)
    chex.clear_trace_counter()
    eight_state, eight_metrics = run_steps(config, mode, 8)
    np.testing.assert_allclose(eight_metrics["d_loss"], one_metrics["d_loss"], rtol=1e-4)
    chex.assert_trees_all_close(jax.device_get(eight_state.d.params),
                                jax.device_get(one_state.d.params), rtol=1e-4, atol=1e-5)


def test_generator_ema_moves_on_generator_updates_only(digits):
    config = smoke_config(digits, n_critic=2, ema_decay=0.5)
    frozen = ml_collections.FrozenConfigDict(config)
    dp = DataParallel("shard_map", jax.devices()[:1])
    step_fn = dp.compile(lambda s, b: dcgan.train_step(s, b, config=frozen), donate=False)
    state = dcgan.create_state(config)
    ema = jax.device_get(state.g_ema)
    for i in range(4):
        before = jax.device_get(state)
        state, _ = step_fn(dp.put_state(state), dp.put_batch(fake_batch(config, seed=i)))
        state = jax.device_get(dp.get_state(state))
        if i % 2 == 0:  # a D-only step: G and its average stay
            chex.assert_trees_all_equal(state.g.params, before.g.params)
            chex.assert_trees_all_equal(state.g_ema, before.g_ema)
            continue
        g_updates_before = i // 2  # 0, then 1
        decay = min(0.5, (1 + g_updates_before) / (10 + g_updates_before))
        ema = jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, ema, state.g.params)
        chex.assert_trees_all_close(state.g_ema, ema, rtol=1e-6, atol=1e-7)
        assert not np.allclose(state.g.params["project"]["kernel"],
                               before.g.params["project"]["kernel"])
