"""Every GAN option reachable from config runs a training step on 8 devices in both modes."""

import jax
import ml_collections
import numpy as np
import pytest

from common_jax.parallel import DataParallel
from gans_jax.trainers import dcgan
from tests.helpers import smoke_config

# Each option of the toolkit appears in at least one of these combinations.
OPTION_SETS = {
    "minimax_transpose3_instance": {
        "loss.kind": "minimax", "loss.real_label": 0.9, "model.upsample": "transpose3",
        "model.g_norm": "instance", "model.d_norm": "instance", "model.g_activation": "elu",
        "model.d_activation": "tanh"},
    "lsgan_nearest_pixel_prelu_noise": {
        "loss.kind": "lsgan", "model.upsample": "nearest", "model.g_norm": "pixel",
        "model.d_norm": "layer", "model.g_activation": "prelu", "model.d_activation": "prelu",
        "instance_noise": 0.1, "instance_noise_steps": 10},
    "wgan_gp_ncritic_bilinear_drift": {
        "loss.kind": "wasserstein", "loss.gradient_penalty": 10.0, "loss.drift": 0.001,
        "n_critic": 2, "model.upsample": "bilinear", "model.d_norm": "layer",
        "model.g_activation": "arctan", "model.d_activation": "softplus"},
    "hinge_spectral_pixelshuffle_avgpool_ttur": {
        "loss.kind": "hinge", "model.d_spectral_norm": True, "model.d_norm": "none",
        "model.upsample": "pixel_shuffle", "model.downsample": "avg_pool",
        "model.g_norm": "none", "model.d_slope": 0.1, "optimizer.g_lr": 1e-4,
        "optimizer.d_lr": 4e-4, "ema_decay": 0.9},
    "r1_xla_transpose4": {
        "loss.r1": 10.0, "model.upsample_impl": "xla", "model.g_activation": "silu",
        "model.d_activation": "logistic"},
}


def two_steps(config, mode):
    dp = DataParallel(mode)
    step = dp.compile(lambda s, b: dcgan.train_step(
        s, b, config=ml_collections.FrozenConfigDict(config)), donate=False)
    state = dp.put_state(dcgan.create_state(config))
    rng = np.random.RandomState(0)
    states, all_metrics = [], []
    for _ in range(2):
        images = rng.uniform(-1, 1, (config.batch_size, 28, 28, 1)).astype(np.float32)
        state, metrics = step(state, dp.put_batch({"image": images}))
        states.append(jax.device_get(dp.get_state(state)))
        all_metrics.append(dp.get_metrics(metrics))
    return states, all_metrics


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_option_set_trains_on_eight_devices(tmp_path, name, mode):
    config = smoke_config(tmp_path, **OPTION_SETS[name])
    fresh = dcgan.create_state(config)
    states, metrics = two_steps(config, mode)
    assert int(states[-1].step) == 2
    for m in metrics:
        assert all(np.isfinite(v) for v in m.values()), m
        assert m["finite"] == 1.0
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), fresh.d.params, states[-1].d.params)
    assert any(jax.tree.leaves(changed)), "D did not learn"
    g_moved = [not np.allclose(fresh.g.params["project"]["kernel"], s.g.params["project"]["kernel"])
               for s in states]
    if config.n_critic == 2:
        assert g_moved == [False, True]  # G waits for the second D update
    else:
        assert g_moved == [True, True]
