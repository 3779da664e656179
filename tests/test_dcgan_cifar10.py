"""The CIFAR-10 DCGAN: the "sngan_dcgan" networks (shapes, parameter counts against
PyTorch-StudioGAN's deep_conv.py, the PyTorch twin's outputs), the configs and their variants,
a smoke training run of each, and the FID curve tool on synthetic metrics files."""

import importlib
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from benchmarks import common
from common_jax.errors import UserError
from gans_jax import evaluation, fid_curve
from gans_jax.configs import dcgan_anime, dcgan_cifar10, dcgan_cifar10_paper, dcgan_mnist
from gans_jax.models.dcgan import Discriminator, Generator, geometry
from gans_jax.trainers import dcgan as trainer


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def init(config, batch: int = 2):
    """Shapes of (G variables, D variables) for a config's model section."""
    m = config.model
    g = Generator(m.image_size, m.channels, width=m.g_width, norm=m.g_norm,
                  activation=m.g_activation, architecture=m.get("architecture", "dcgan"))
    d = Discriminator(m.image_size, width=m.d_width, norm=m.d_norm,
                      spectral_norm=m.d_spectral_norm, activation=m.d_activation,
                      slope=m.d_slope, architecture=m.get("architecture", "dcgan"))
    z = jnp.zeros((batch, m.z_dim))
    x = jnp.zeros((batch, m.image_size, m.image_size, m.channels))
    return (jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False)),
            jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, train=False)))


# ----------------------------------------------------------------------------- networks

# PyTorch-StudioGAN's src/models/deep_conv.py at 32x32 RGB, z 128, written out layer by layer:
# (kind, in, out, kernel); every conv, transposed conv and linear has a bias (utils/ops.py).
STUDIOGAN_G = [("linear", 128, 4 * 4 * 512, 1), ("deconv", 512, 256, 4), ("bn", 256, 0, 0),
               ("deconv", 256, 128, 4), ("bn", 128, 0, 0), ("deconv", 128, 64, 4),
               ("bn", 64, 0, 0), ("conv", 64, 3, 3)]
STUDIOGAN_D_CONVS = [(3, 64, 3), (64, 64, 4), (64, 128, 3), (128, 128, 4), (128, 256, 3),
                     (256, 256, 4), (256, 512, 3)]


def studiogan_count(layers) -> int:
    total = 0
    for kind, cin, cout, kernel in layers:
        if kind == "bn":
            total += 2 * cin  # weight and bias
        else:
            total += cin * cout * kernel * kernel + cout  # weights and bias
    return total


def studiogan_d(spectral_norm: bool) -> list:
    """Its D: without spectral norm, a batch norm after every conv; a linear 512 -> 1 head."""
    layers = []
    for cin, cout, kernel in STUDIOGAN_D_CONVS:
        layers.append(("conv", cin, cout, kernel))
        if not spectral_norm:
            layers.append(("bn", cout, 0, 0))
    return layers + [("linear", 512, 1, 1)]


def test_parameter_counts_equal_studiogan_deep_conv_less_the_cancelled_biases():
    g_vars, d_vars = init(dcgan_cifar10.get_config())
    # A batch norm right after a layer cancels its bias; StudioGAN keeps those dead biases.
    g_cancelled = 256 + 128 + 64
    assert count(g_vars["params"]) == studiogan_count(STUDIOGAN_G) - g_cancelled == 3_811_907
    d_cancelled = sum(cout for _, cout, _ in STUDIOGAN_D_CONVS)
    assert count(d_vars["params"]) == studiogan_count(studiogan_d(False)) - d_cancelled
    # With spectral norm and no batch norm every bias stays: exactly StudioGAN's count.
    _, sn_vars = init(dcgan_cifar10.get_config("hinge_sn"))
    assert count(sn_vars["params"]) == studiogan_count(studiogan_d(True)) == 2_928_193
    assert set(sn_vars["batch_stats"]) == {f"{name}_sn" for name in sn_vars["params"]}


def test_layer_shapes_follow_the_table():
    g_vars, d_vars = init(dcgan_cifar10.get_config())
    g, d = g_vars["params"], d_vars["params"]
    assert g["project"]["kernel"].shape == (128, 4 * 4 * 512)
    assert [g[f"up{i}"]["kernel"].shape for i in range(3)] == [
        (4, 4, 512, 256), (4, 4, 256, 128), (4, 4, 128, 64)]
    assert g["to_image"]["kernel"].shape == (3, 3, 64, 3)
    kernels = [d[name]["kernel"].shape for name in
               ("conv0a", "conv0b", "conv1a", "conv1b", "conv2a", "conv2b", "conv3")]
    assert kernels == [(k, k, cin, cout) for cin, cout, k in STUDIOGAN_D_CONVS]
    assert d["logit"]["kernel"].shape == (512, 1) and "bias" in d["logit"]
    assert "bias" not in d["conv0a"]  # batch norm follows: no bias


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1), (64, 3)])
def test_sngan_dcgan_shapes_and_ranges_at_other_sizes(size, channels):
    g = Generator(size, channels, width=8, architecture="sngan_dcgan")
    d = Discriminator(size, width=8, norm="none", spectral_norm=True, activation="leaky_relu",
                      slope=0.1, architecture="sngan_dcgan")
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 128))
    g_vars = g.init(jax.random.PRNGKey(1), z, train=False)
    images, _ = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
    assert images.shape == (4, size, size, channels)
    assert float(jnp.abs(images).max()) <= 1.0
    d_vars = d.init(jax.random.PRNGKey(2), images, train=False)
    logits, _ = d.apply(d_vars, images, train=True, mutable=["batch_stats"])
    assert logits.shape == (4,) and bool(jnp.all(jnp.isfinite(logits)))
    base, n = geometry(size)
    assert g_vars["params"]["project"]["kernel"].shape == (128, base * base * 8 * 2**n)


def paper_dcgan_count(config) -> tuple[int, int]:
    """The paper DCGAN's parameter counts from its layer formula (bias-free layers; batch
    norm everywhere but D's first layer)."""
    m = config.model
    base, n = geometry(m.image_size)
    top = m.g_width * 2 ** (n - 1)
    g = m.z_dim * base * base * top + 2 * top
    for i in range(n - 1):
        g += 16 * (top // 2**i) * (top // 2 ** (i + 1)) + 2 * (top // 2 ** (i + 1))
    g += 16 * m.g_width * m.channels
    d, cin = 0, m.channels
    for i in range(n):
        cout = m.d_width * 2**i
        d += 16 * cin * cout + (2 * cout if i > 0 else 0)
        cin = cout
    return g, d + base * base * cin


@pytest.mark.parametrize("module", [dcgan_mnist, dcgan_anime, dcgan_cifar10_paper])
def test_paper_architecture_is_the_default_and_its_trees_are_unchanged(module):
    config = module.get_config()
    assert config.model.get("architecture", "dcgan") == "dcgan"
    assert Generator(32, 3).architecture == Discriminator(32).architecture == "dcgan"
    g_vars, d_vars = init(config)
    assert (count(g_vars["params"]), count(d_vars["params"])) == paper_dcgan_count(config)
    assert "project_bn" in g_vars["params"] and "down0" in d_vars["params"]


def test_unknown_architecture_is_a_user_error():
    g = Generator(32, 3, architecture="biggan")
    with pytest.raises(UserError, match="--config.model.architecture"):
        g.init(jax.random.PRNGKey(0), jnp.zeros((1, 128)), train=False)


# ----------------------------------------------------------------------------- PyTorch twin


def copy_to_twin(torch, g_params, d_params, g_twin, d_twin, base: int):
    """Loads Flax weights into the twins (layouts: Dense [in, out] -> [out, in]; conv
    [kh, kw, in, out] -> [out, in, kh, kw]; transposed conv -> [in, out, kh, kw]; the projection's
    NHWC output order -> NCHW)."""

    def t(x):
        return torch.from_numpy(np.array(x))

    kernel = np.asarray(g_params["project"]["kernel"])  # [z, base*base*F], (h, w, f) order
    z_dim, flat = kernel.shape
    features = flat // (base * base)
    nchw = kernel.reshape(z_dim, base, base, features).transpose(0, 3, 1, 2).reshape(z_dim, -1)
    bias = np.asarray(g_params["project"]["bias"]).reshape(base, base, features)
    with torch.no_grad():
        g_twin.project.weight.copy_(t(nchw.T))
        g_twin.project.bias.copy_(t(bias.transpose(2, 0, 1).reshape(-1)))
        deconvs = [m for m in g_twin.body if isinstance(m, torch.nn.ConvTranspose2d)]
        norms = [m for m in g_twin.body if isinstance(m, torch.nn.BatchNorm2d)]
        for i, (deconv, bn) in enumerate(zip(deconvs, norms, strict=True)):
            deconv.weight.copy_(t(np.asarray(g_params[f"up{i}"]["kernel"]).transpose(2, 3, 0, 1)))
            bn.weight.copy_(t(g_params[f"up{i}_bn"]["scale"]))
            bn.bias.copy_(t(g_params[f"up{i}_bn"]["bias"]))
        to_image = [m for m in g_twin.body if isinstance(m, torch.nn.Conv2d)][-1]
        to_image.weight.copy_(t(np.asarray(g_params["to_image"]["kernel"]).transpose(3, 2, 0, 1)))
        to_image.bias.copy_(t(g_params["to_image"]["bias"]))
        names = ["conv0a", "conv0b", "conv1a", "conv1b", "conv2a", "conv2b", "conv3"]
        convs = [m for m in d_twin.body if isinstance(m, torch.nn.Conv2d)]
        d_norms = [m for m in d_twin.body if isinstance(m, torch.nn.BatchNorm2d)]
        for name, conv in zip(names, convs, strict=True):
            conv.weight.copy_(t(np.asarray(d_params[name]["kernel"]).transpose(3, 2, 0, 1)))
            if conv.bias is not None:
                conv.bias.copy_(t(d_params[name]["bias"]))
        for name, bn in zip(names, d_norms, strict=False):
            bn.weight.copy_(t(d_params[f"{name}_bn"]["scale"]))
            bn.bias.copy_(t(d_params[f"{name}_bn"]["bias"]))
        d_twin.logit.weight.copy_(t(np.asarray(d_params["logit"]["kernel"]).T))
        d_twin.logit.bias.copy_(t(d_params["logit"]["bias"]))


@pytest.mark.parametrize("d_norm", ["batch", "none"])
def test_twin_computes_what_the_flax_networks_compute(d_norm):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")
    from benchmarks import torch_models

    config = dcgan_cifar10.get_config()
    m = config.model
    m.g_width = m.d_width = 16
    m.d_norm = d_norm
    m.d_activation = "leaky_relu" if d_norm == "none" else "relu"
    g, d = trainer_models(config)
    z = jax.random.normal(jax.random.PRNGKey(0), (8, m.z_dim))
    g_vars = g.init(jax.random.PRNGKey(1), z, train=False)
    images, _ = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
    d_vars = d.init(jax.random.PRNGKey(2), images, train=False)
    # Non-zero biases, so that a misplaced bias would show.
    d_params = jax.tree.map(lambda x: x + 0.01, d_vars["params"])
    logits, _ = d.apply({**d_vars, "params": d_params}, images, train=True,
                        mutable=["batch_stats"])
    g_twin, d_twin = torch_models.dcgan_from_config(config)
    copy_to_twin(torch, g_vars["params"], d_params, g_twin, d_twin, base=4)
    g_twin.train(), d_twin.train()  # batch statistics, as the Flax train-mode apply
    with torch.no_grad():
        twin_images = g_twin(torch.from_numpy(np.array(z)))
        twin_logits = d_twin(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(twin_images.numpy().transpose(0, 2, 3, 1), np.asarray(images),
                               atol=2e-5)
    np.testing.assert_allclose(twin_logits.numpy(), np.asarray(logits), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", [None, "hinge_sn"])
def test_twin_has_the_flax_parameter_sizes(variant):
    pytest.importorskip("torch", reason="PyTorch is not installed (the bench extra)")
    from benchmarks import torch_models

    config = dcgan_cifar10.get_config(variant)
    g_vars, d_vars = init(config)
    g_twin, d_twin = torch_models.dcgan_from_config(config)
    for flax_vars, twin in ((g_vars, g_twin), (d_vars, d_twin)):
        assert sorted(p.numel() for p in twin.parameters()) == sorted(
            x.size for x in jax.tree.leaves(flax_vars["params"]))
    # The default config's step has a twin for the benchmarks; the hinge loss has none.
    assert torch_models.unsupported(config) == (None if variant is None else
                                                "loss.kind='hinge' has no PyTorch twin")


# ----------------------------------------------------------------------------- configs


def trainer_models(config):
    """The trainer's networks for a config (the architecture the config names)."""
    return trainer.make_models(config)


def test_trainer_builds_the_configured_architecture():
    g, d = trainer.make_models(dcgan_cifar10.get_config())
    assert g.architecture == d.architecture == "sngan_dcgan"


def test_variants_set_what_they_say_and_smoke_goes_last():
    base = dcgan_cifar10.get_config()
    assert (base.model.architecture, base.model.z_dim, base.batch_size) == ("sngan_dcgan", 128, 64)
    assert (base.loss.kind, base.n_critic, base.ema_decay) == ("non_saturating", 1, 0.999)
    assert (base.optimizer.g_lr, base.optimizer.b1, base.optimizer.b2) == (2e-4, 0.5, 0.999)
    assert base.metrics.inception and base.metrics.reference_split == "test"
    assert base.data.augment == "flip" and base.model.image_size == 32
    studiogan = dcgan_cifar10.get_config("studiogan")
    assert (studiogan.n_critic, studiogan.num_steps) == (2, 400_000)
    sn = dcgan_cifar10.get_config("hinge_sn")
    assert (sn.loss.kind, sn.model.d_spectral_norm, sn.model.d_norm) == ("hinge", True, "none")
    assert (sn.model.d_activation, sn.model.d_slope, sn.n_critic) == ("leaky_relu", 0.1, 1)
    for spec in ("smoke+studiogan", "studiogan+smoke"):
        smoke = dcgan_cifar10.get_config(spec)
        assert smoke.num_steps == 6 and smoke.n_critic == 2 and not smoke.metrics.inception
    paper = dcgan_cifar10_paper.get_config()
    assert (paper.model.architecture, paper.model.z_dim, paper.data.augment) == ("dcgan", 100,
                                                                                 "flip")


@pytest.mark.parametrize("module", [dcgan_cifar10, dcgan_cifar10_paper])
def test_unknown_variant_is_a_user_error_naming_the_variants(module):
    with pytest.raises(UserError, match="unknown config variant 'bogus'.*smoke"):
        module.get_config("smoke+bogus")


def test_train_py_reports_a_bad_variant_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "gans_jax/configs/dcgan_cifar10.py:sn",
         "--workdir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
        cwd=common.ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: unknown config variant 'sn'") and "Traceback" not in \
        result.stderr


def tiny_cifar(root, n: int = 24, seed: int = 0):
    """train/ and test/ folders of random 32x32 RGB PNGs in two classes."""
    rng = np.random.RandomState(seed)
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n // 2):
                pixels = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("spec,arch", [("dcgan_cifar10.py:smoke", "sngan_dcgan"),
                                       ("dcgan_cifar10.py:hinge_sn+smoke", "sngan_dcgan"),
                                       ("dcgan_cifar10.py:studiogan+smoke", "sngan_dcgan"),
                                       ("dcgan_cifar10_paper.py:smoke", "dcgan")])
def test_smoke_training_run(spec, arch, tmp_path):
    file, _, variant = spec.partition(":")
    module = importlib.import_module(f"gans_jax.configs.{file[:-3]}")
    config = module.get_config(variant)
    config.data.path = str(tiny_cifar(tmp_path / "data"))
    summary = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["final_step"] == config.num_steps == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r for r in rows if "d_loss" in r]
    assert losses and all(np.isfinite(r["d_loss"]) and r["finite"] == 1.0 for r in losses)
    assert (tmp_path / "run" / "samples_final.png").is_file()
    state = jax.eval_shape(lambda: trainer.create_state(config))
    g_params, d_params = state.g.params, state.d.params
    if arch == "sngan_dcgan":
        assert g_params["to_image"]["kernel"].shape == (3, 3, 8, 3)
        assert "conv3" in d_params
        assert ("conv3_sn" in state.d.batch_stats) == config.model.d_spectral_norm
    else:
        assert "project_bn" in g_params and "down2" in d_params


class RecordingScorer:
    """Stands in for evaluation.SampleScorer: 'scores' a stream by the mean of its images."""

    def __init__(self):
        self.metrics = type("M", (), {"num_samples": 8, "periodic_num_samples": 4,
                                     "batch_size": 4})()

    def score(self, sampler, num):
        images = np.concatenate(list(sampler(num)))
        assert len(images) == num
        return {"inception": {"fid": float(images.mean()), "kid_mean": 0.0, "kid_std": 0.0,
                              "protocol": {"n_fake": num}}}


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, values):
        self.scalars.append((step, values))


def test_score_action_scores_the_ema_and_the_raw_generator_apart():
    config = dcgan_cifar10.get_config("smoke")
    config.ema_decay = 0.5
    state = trainer.create_state(config)
    # Make the two generators differ: the EMA weights are zero, so its samples are tanh(0).
    state = state.replace(g_ema=jax.tree.map(jnp.zeros_like, state.g_ema))
    scorer, summary, writer = RecordingScorer(), {}, RecordingWriter()
    action = evaluation.ScoreAction(
        scorer, trainer.make_sampler(config, scorer), summary,
        raw_sampler=trainer.make_sampler(config, scorer, use_ema=False))
    action(state, 3, writer)
    action(state, 6, writer, final=True)
    (step, periodic), _, (_, final), (_, final_raw) = writer.scalars
    assert step == 3 and set(periodic) == {"inception_fid", "inception_kid", "inception_samples"}
    assert periodic["inception_samples"] == 4 and final["inception_samples"] == 8
    assert final["inception_fid"] == 0.0  # tanh of a zero network
    assert final_raw["raw_inception_fid"] != 0.0
    raw = np.concatenate(list(trainer.generate_batches(state, config, 8, batch_size=4,
                                                       use_ema=False)))
    assert final_raw["raw_inception_fid"] == pytest.approx(float(raw.mean()), abs=1e-6)
    assert summary["gan_metrics"]["step"] == summary["gan_metrics_raw"]["step"] == 6
    assert summary["gan_metrics_raw"]["inception"]["protocol"]["n_fake"] == 8


# ----------------------------------------------------------------------------- fid_curve


def write_run(folder, fids, *, final=None, evals=(), n_critic=1, periodic_n=2000,
              final_n=10000, truncated=False, raw=(), raw_evals=()):
    folder.mkdir(parents=True)
    rows = [{"step": 10, "d_loss": 1.0}] + [{"step": s, "inception_fid": f, "inception_kid": 0.1}
                                            for s, f in fids]
    rows += [{"step": s, "raw_inception_fid": f} for s, f in raw]
    if final:
        rows.append({"step": final[0], "inception_fid": final[1]})
    rows += [{"step": s, "eval_inception_fid": f} for s, f in evals]
    rows += [{"step": s, "eval_raw_inception_fid": f} for s, f in raw_evals]
    text = "".join(json.dumps(r) + "\n" for r in rows) + ('{"step": 9' if truncated else "")
    (folder / "metrics.jsonl").write_text(text)
    (folder / "config.json").write_text(json.dumps(
        {"n_critic": n_critic, "metrics": {"periodic_num_samples": periodic_n}}))
    summary = {}
    if final:
        summary["gan_metrics"] = {"step": final[0], "inception": {
            "fid": final[1], "protocol": {"n_fake": final_n}}}
    if final and raw:
        summary["gan_metrics_raw"] = {"step": final[0], "inception": {
            "protocol": {"n_fake": final_n}}}
    if evals:
        summary["eval"] = {"step": evals[-1][0], "inception": {"protocol": {"n_fake": 5000}}}
    if raw_evals:
        summary["eval_raw"] = {"step": raw_evals[-1][0],
                               "inception": {"protocol": {"n_fake": 10000}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_fid_curve_reads_periodic_final_and_eval_points(tmp_path):
    run = write_run(tmp_path / "a", [(1000, 150.0), (2000, 90.5)], final=(3000, 70.25),
                    evals=[(3000, 71.0)], n_critic=2, truncated=True)
    curve = fid_curve.load_curve(run)
    assert curve.periodic == [(1000, 150.0), (2000, 90.5)] and curve.final == (3000, 70.25)
    assert curve.evals == [(3000, 71.0)]
    assert (curve.periodic_n, curve.final_n, curve.eval_n, curve.n_critic) == (2000, 10000,
                                                                               5000, 2)
    assert fid_curve.load_curve(run, "mine").label == "mine"


def test_fid_curve_draws_the_raw_generator_beside_the_ema_one(tmp_path):
    run = write_run(tmp_path / "a", [(1000, 150.0)], final=(2000, 80.0),
                    raw=[(1000, 160.0), (2000, 85.5)])
    ema, raw = fid_curve.load_curves(run, "c10")
    assert (ema.label, raw.label) == ("c10 EMA G", "c10 raw G")
    assert ema.periodic == [(1000, 150.0)] and ema.final == (2000, 80.0)
    assert raw.periodic == [(1000, 160.0)] and raw.final == (2000, 85.5)
    assert raw.final_n == 10000
    # a run without raw scores (no weight average) gives one curve, named as given
    [only] = fid_curve.load_curves(write_run(tmp_path / "b", [(1000, 150.0)]), "b")
    assert only.label == "b"


def test_fid_curve_takes_checkpoints_scored_by_eval_for_each_generator(tmp_path):
    # `train.py eval --step N [--noema]` of saved checkpoints: EMA scores as eval_*, raw ones
    # as eval_raw_*; a checkpoint scored twice counts with its latest score
    run = write_run(tmp_path / "a", [(1000, 150.0)], final=(3000, 60.0),
                    evals=[(2000, 90.0), (1000, 140.0), (2000, 88.0)],
                    raw_evals=[(2000, 95.0)])
    ema, raw = fid_curve.load_curves(run, "c10")
    assert ema.evals == [(1000, 140.0), (2000, 88.0)] and ema.eval_n == 5000
    assert raw.evals == [(2000, 95.0)] and raw.eval_n == 10000
    assert raw.periodic == [] and raw.final is None
    lines = fid_curve.describe(raw)
    assert lines == ["c10 raw G: step 2000: FID 95.00 eval (10k samples)"]
    out = fid_curve.plot([ema, raw], [], tmp_path / "curve.png")
    assert out.stat().st_size > 0


def test_fid_curve_puts_the_final_score_of_a_resumed_run_among_the_full_size_scores(tmp_path):
    # A run stopped at 2,000 (final score on 10k samples), then resumed to 4,000: its metrics
    # hold the 2,000-step final score among the periodic (2k) ones; the row says its count.
    run = write_run(tmp_path / "a", [(1000, 150.0), (3000, 75.0)], final=(4000, 60.0))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2000, "inception_fid": 90.0, "inception_samples": 10000})
                + "\n")
        f.write(json.dumps({"step": 3000, "inception_fid": 75.5, "inception_samples": 2000})
                + "\n")
    curve = fid_curve.load_curve(run)
    assert curve.periodic == [(1000, 150.0), (3000, 75.0), (3000, 75.5)]
    assert curve.evals == [(2000, 90.0)] and curve.eval_n == 10000
    assert curve.final == (4000, 60.0)


def test_fid_curve_writes_a_png_with_the_published_lines(tmp_path, capsys):
    a = write_run(tmp_path / "a", [(1000, 150.0), (2000, 90.5)], final=(3000, 70.25))
    b = write_run(tmp_path / "b", [(500, 200.0)])
    out = tmp_path / "plots" / "fid.png"
    assert fid_curve.main([str(a), str(b), "--out", str(out), "--reference", "ours=5.16",
                           "--x", "g_updates"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "a: step 3000: FID 70.25 final (10k samples)" in printed
    assert "b: step 500: FID 200.00 (2k samples)" in printed
    labels = [label for label, _ in fid_curve.PUBLISHED]
    assert [fid for _, fid in fid_curve.PUBLISHED] == [28.95, 50.28]
    assert "200k" in labels[0] and "200k" in labels[1]


def test_fid_curve_reference_lines_follow_the_options(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(fid_curve, "plot", lambda curves, refs, out, x_unit, published:
                        drawn.append((refs, published)))
    a = write_run(tmp_path / "a", [(1000, 150.0), (4000, 60.0)])
    args = [str(a), "--out", str(tmp_path / "x.png")]
    fid_curve.main(args)
    fid_curve.main(args + ["--no-published", "--reference", "floor = 5.16"])
    fid_curve.main(args + ["--x", "g_updates"])
    assert [refs for refs, _ in drawn] == [list(fid_curve.PUBLISHED), [("floor", 5.16)],
                                           list(fid_curve.PUBLISHED)]
    steps_axis, off, g_axis = [published for _, published in drawn]
    assert off is None
    # StudioGAN counts G updates with 2 D updates each: on the steps (D updates) axis its
    # 2,000 G updates sit at 4,000; points run to 1.5x our furthest step (6,000)
    assert steps_axis.periodic == [(4000, 114.94)]
    assert g_axis.periodic == [(2000, 114.94), (4000, 92.60), (6000, 75.59)]


@pytest.mark.parametrize("make_args,message", [
    (lambda p: [str(p / "absent")], "run directory"),
    (lambda p: [str(write_run(p / "nofid", []))], "no inception_fid"),
    (lambda p: [str(write_run(p / "a", [(1, 2.0)])), "--reference", "StudioGAN"], "LABEL=FID"),
    (lambda p: [str(write_run(p / "a", [(1, 2.0)])), "--label", "x", "--label", "y"],
     "one --label per run"),
])
def test_fid_curve_user_errors_are_one_line(tmp_path, capsys, make_args, message):
    assert fid_curve.main([*make_args(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_fid_curve_refuses_a_corrupt_line_inside_the_file(tmp_path):
    run = write_run(tmp_path / "a", [(1000, 150.0)])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        fid_curve.load_curve(run)
