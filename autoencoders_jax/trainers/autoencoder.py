"""Convolutional autoencoder training: the state, the pure train and evaluation steps, image
quality on a whole split, reconstruction of files, encoder features, and the entry point.

The train step runs per device with the named axis `common_jax.parallel.AXIS` (batch norm, when
chosen, averages its statistics over it; gradients are averaged over it), so N devices compute
what one device computes on the whole batch. The loss is the per-pixel reconstruction error
(``loss.kind``: mse or l1, on the [-1, 1] data) plus ``loss.ssim_weight * (1 - SSIM)``.

Evaluation reads the whole evaluation split once (`common_jax.evaluate.SplitEvaluator`) and
reports, in the [0, 1] pixel range, the mean over images of MSE, PSNR (dB) and SSIM (the
standard 11x11 Gaussian-window SSIM of `common_jax.metrics.image_quality`, computed here in JAX
in float32). Every ``sample_every`` steps a grid of fixed evaluation images is written:
originals in the top row, their reconstructions below.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from autoencoders_jax.models.conv_ae import LATENT_KINDS, NORMS, ConvAutoencoder
from common_jax import activations, loop, optim, parallel
from common_jax import data as data_lib
from common_jax.checkpoint import restore_for_inference
from common_jax.errors import UserError
from common_jax.evaluate import SplitEvaluator
from common_jax.metrics import image_quality
from common_jax.parallel import DataParallel
from common_jax.state import NetState, apply_gradients, create_net_state
from common_jax.writers import image_grid
from gans_jax.layers import UPSAMPLE

log = logging.getLogger(__name__)

LOSSES = ("mse", "l1")
GRID_IMAGES = 8  # columns of the periodic originals-over-reconstructions grid
INFER_BATCH = 256  # images per forward pass in reconstruct / features
CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "model.latent_kind": LATENT_KINDS,
    "model.norm": NORMS,
    "model.upsample": UPSAMPLE,
    "model.activation": activations.ACTIVATIONS + tuple(activations.ALIASES),
    "loss.kind": LOSSES,
    "optimizer.name": optim.OPTIMIZERS,
    "optimizer.schedule": optim.SCHEDULES,
    "data.augment": tuple(data_lib.AUGMENTATIONS),
    "parallel": parallel.MODES,
}
# Settings that change how the network is evaluated or shown, not what it learns.
RESUMABLE = frozenset({"eval_every", "eval_batch_size", "sample_every"})


@flax.struct.dataclass
class AEState:
    """Everything an autoencoder run needs to continue."""

    net: NetState
    step: jax.Array  # int32 scalar: steps completed


# ----------------------------------------------------------------------------- model, state


def make_model(config: ml_collections.ConfigDict, axis_name: str | None = None):
    m = config.model
    return ConvAutoencoder(
        image_size=m.image_size, channels=m.channels, widths=tuple(m.widths),
        latent_kind=m.latent_kind, latent_size=m.latent_size,
        convs_per_stage=m.convs_per_stage, norm=m.norm, activation=m.activation,
        upsample=m.upsample, axis_name=axis_name)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optim.make_optimizer(config.optimizer, config.num_steps)


def create_state(config: ml_collections.ConfigDict) -> AEState:
    """A fresh state, deterministic from ``config.seed``."""
    m = config.model
    images = jnp.zeros((1, m.image_size, m.image_size, m.channels))
    variables = make_model(config).init(jax.random.PRNGKey(config.seed), images)
    return AEState(net=create_net_state(variables, make_optimizer(config)),
                   step=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- quality in JAX


def _gaussian_blur_valid(x: jax.Array) -> jax.Array:
    """SSIM's Gaussian local mean, only where the whole window fits: [N,H,W,C] ->
    [N, H-10, W-10, C] (separable, channel by channel)."""
    taps = jnp.asarray(image_quality.gaussian_window(), x.dtype)
    c = x.shape[-1]
    k = len(taps)
    rows = jnp.tile(taps.reshape(k, 1, 1, 1), (1, 1, 1, c))
    cols = jnp.tile(taps.reshape(1, k, 1, 1), (1, 1, 1, c))
    dims = ("NHWC", "HWIO", "NHWC")
    for kernel in (rows, cols):
        x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dims,
                                         feature_group_count=c)
    return x


def ssim(a: jax.Array, b: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Mean SSIM per image [N] of batches [N, H, W, C]: `image_quality.ssim`'s definition."""
    mu_a, mu_b = _gaussian_blur_valid(a), _gaussian_blur_valid(b)
    var_a = _gaussian_blur_valid(a * a) - mu_a**2
    var_b = _gaussian_blur_valid(b * b) - mu_b**2
    cov = _gaussian_blur_valid(a * b) - mu_a * mu_b
    c1 = (image_quality.SSIM_K1 * data_range) ** 2
    c2 = (image_quality.SSIM_K2 * data_range) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) *
                                                          (var_a + var_b + c2))
    return value.mean(axis=(1, 2, 3))


def to_unit(x: jax.Array) -> jax.Array:
    """[-1, 1] data -> the [0, 1] pixel range the metrics are reported in."""
    return (x + 1.0) / 2.0


def quality(images: jax.Array, recon: jax.Array) -> dict[str, jax.Array]:
    """Per-image MSE, PSNR (dB) and SSIM in the [0, 1] range, each [N]."""
    a, b = to_unit(images), to_unit(recon)
    mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
    # A floor keeps a perfect reconstruction finite (1e-10: 100 dB).
    psnr = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
    return {"mse": mse, "psnr": psnr, "ssim": ssim(a, b)}


# ----------------------------------------------------------------------------- steps


def reconstruction_loss(images: jax.Array, recon: jax.Array, loss_cfg) -> jax.Array:
    """The configured loss: mean per-pixel error (+ ssim_weight * (1 - mean SSIM))."""
    error = recon - images
    loss = jnp.mean(error**2) if loss_cfg.kind == "mse" else jnp.mean(jnp.abs(error))
    if loss_cfg.ssim_weight:
        loss = loss + loss_cfg.ssim_weight * (1.0 - ssim(to_unit(images), to_unit(recon)).mean())
    return loss


def train_step(state: AEState, batch: dict, *, config: ml_collections.ConfigDict):
    """One optimizer update on this device's slice of the batch."""
    model = make_model(config, axis_name=parallel.AXIS)
    tx = make_optimizer(config)
    images = batch["image"]

    def loss_fn(params):
        recon, updates = model.apply(state.net.variables(params), images, train=True,
                                     mutable=["batch_stats"])
        loss = reconstruction_loss(images, recon, config.loss)
        return loss, (recon, updates.get("batch_stats", state.net.batch_stats))

    (loss, (recon, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.net.params)
    grads = jax.lax.pmean(grads, parallel.AXIS)
    net = apply_gradients(state.net, grads, tx).replace(batch_stats=batch_stats)
    mse = jnp.mean((to_unit(images) - to_unit(recon)) ** 2)
    metrics = {
        "loss": loss,
        "mse": mse,
        "psnr_batch": -10.0 * jnp.log10(mse),  # of the batch's mean MSE, a progress gauge
        "lr": optim.make_schedule(config.optimizer, config.num_steps)(state.step),
        "grad_norm": optax.tree.norm(grads),
        "finite": parallel.tree_all_finite(net.params).astype(jnp.float32),
    }
    metrics = jax.lax.pmean(metrics, parallel.AXIS)
    return AEState(net=net, step=state.step + 1), metrics


def reconstruct(state: AEState, images: jax.Array, config) -> jax.Array:
    """Inference reconstructions (running batch-norm averages)."""
    return make_model(config).apply(state.net.variables(), images)


def eval_step(state: AEState, batch: dict, *, config) -> dict[str, jax.Array]:
    """Masked sums of the per-image metrics over this device's rows, added over devices."""
    q = quality(batch["image"], reconstruct(state, batch["image"], config))
    mask = batch["mask"]
    sums = {name: jnp.sum(values * mask) for name, values in q.items()}
    sums["count"] = jnp.sum(mask)
    return jax.lax.psum(sums, parallel.AXIS)


# ----------------------------------------------------------------------------- evaluation


class Evaluation:
    """The periodic action: image quality on the whole evaluation split, and the grid."""

    def __init__(self, config: ml_collections.ConfigDict, summary: dict):
        self.config = config
        self.summary = summary  # the Task's: merged into summary.json
        self.evaluator: SplitEvaluator | None = None
        self.grid_images: np.ndarray | None = None

    def prepare(self, train_source: data_lib.ImageSource) -> None:
        config, m = self.config, self.config.model
        split = config.data.get("eval_split", "")
        source = train_source
        if split:
            source = data_lib.load_source(config.data, split=split)
            step = functools.partial(eval_step, config=ml_collections.FrozenConfigDict(config))
            self.evaluator = SplitEvaluator(
                source, step, dp=DataParallel(config.parallel), batch_size=config.eval_batch_size,
                image_size=m.image_size, channels=m.channels)
            log.info("evaluation: %s, %d examples", source.name, source.num_examples)
        else:
            log.info("no evaluation split (data.eval_split is empty); evaluation is skipped")
        self.grid_images = spread_images(source, GRID_IMAGES, m.image_size, m.channels)

    def evaluate(self, state: AEState, step: int, writer, *, final: bool = False) -> None:
        if self.evaluator is None:
            return
        sums = self.evaluator.sums(state)
        count = float(sums["count"])
        result = {name: float(sums[name]) / count for name in ("mse", "psnr", "ssim")}
        writer.write_scalars(step, {f"eval_{k}": v for k, v in result.items()})
        log.info("step %d: eval PSNR %.3f dB, SSIM %.4f, MSE %.6f (%d images)", step,
                 result["psnr"], result["ssim"], result["mse"], int(count))
        if final:
            self.summary["eval"] = {"step": step, "num_examples": int(round(count)),
                                    "range": "[0, 1]", **result}

    def grid(self, state: AEState, step: int, writer, *, final: bool = False) -> None:
        recon = np.asarray(_reconstruct_jit(state, jnp.asarray(self.grid_images),
                                            ml_collections.FrozenConfigDict(self.config)))
        writer.write_image_grid(step, "reconstructions",
                                pair_grid(self.grid_images, recon), final=final)


def spread_images(source: data_lib.ImageSource, num: int, image_size: int, channels: int
                  ) -> np.ndarray:
    """`num` images evenly spaced over a split [n, S, S, C] in [-1, 1]: fixed, so grids of
    different steps compare, and spread over the classes of a split stored class by class."""
    index = np.linspace(0, source.num_examples - 1, min(num, source.num_examples)).astype(int)
    subset = dataclasses.replace(
        source, images=None if source.images is None else source.images[index],
        paths=None if source.paths is None else [source.paths[i] for i in index],
        labels=None if source.labels is None else source.labels[index])
    return next(data_lib.make_eval_iterator(subset, batch_size=len(index), image_size=image_size,
                                            channels=channels))["image"]


@functools.partial(jax.jit, static_argnames=("config",))
def _reconstruct_jit(state: AEState, images: jax.Array, config) -> jax.Array:
    return reconstruct(state, images, config)


def pair_grid(originals: np.ndarray, recon: np.ndarray, min_side: int = 64) -> np.ndarray:
    """Originals in the top row, reconstructions below: one image [1, H, W, C] in [-1, 1],
    small images enlarged (nearest) to at least `min_side` pixels a cell."""
    scale = max(1, min_side // originals.shape[1])
    cells = np.concatenate([originals, recon]).repeat(scale, axis=1).repeat(scale, axis=2)
    grid = image_grid(cells, columns=len(originals))
    return (grid.astype(np.float32) / 127.5 - 1.0)[None]


# ----------------------------------------------------------------------------- inference


def infer_in_batches(fn, images: np.ndarray, batch_size: int = INFER_BATCH) -> np.ndarray:
    """fn over [N, ...] in fixed-size batches (the last padded: one compilation)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
        out.append(np.asarray(fn(chunk))[:batch_size - pad])
    return np.concatenate(out)


def image_sizes(paths) -> list[tuple[int, int]]:
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError as e:
            raise UserError(f"could not read '{path}' as an image ({e}); use a PNG or JPEG "
                            "file") from None
    return sizes


def reconstruct_files(state: AEState, config, paths: list[str], out_dir: str | Path
                      ) -> list[Path]:
    """Writes <stem>_recon.png per input: the original (as the model sees it) | its
    reconstruction. Images of another size are centre-cropped to a square and resized to the
    model's size, as in training, with a log line naming them."""
    m = config.model
    for path, (w, h) in zip(paths, image_sizes(paths), strict=True):
        if (w, h) != (m.image_size, m.image_size):
            log.info("%s is %dx%d: centre-cropped and resized to the model's %dx%d", path, w, h,
                     m.image_size, m.image_size)
    images = data_lib.load_image_files(paths, image_size=m.image_size, channels=m.channels)
    frozen = ml_collections.FrozenConfigDict(config)
    recon = infer_in_batches(lambda x: _reconstruct_jit(state, jnp.asarray(x), frozen), images,
                             batch_size=min(len(images), INFER_BATCH))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], set()
    for i, (path, a, b) in enumerate(zip(paths, images, recon, strict=True)):
        name = f"{Path(path).stem}_recon.png"
        name = f"{Path(path).stem}_{i}_recon.png" if name in seen else name
        seen.add(name)
        pair = np.concatenate([a, np.full((m.image_size, 2, m.channels), 1.0), b], axis=1)
        pixels = np.clip((pair + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if m.channels == 1 else pixels).save(out_dir / name)
        written.append(out_dir / name)
    return written


def encode_split(state: AEState, config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(latents [N, D] float32, labels [N] int) of a whole split, data-parallel over this
    process's devices, in the split's order (no augmentation)."""
    m = config.model
    source = data_lib.load_source(config.data, split=split)
    if source.labels is None:
        raise UserError(f"'{source.name}' has no labels; features need labelled data (class "
                        "subfolders)")
    dp = DataParallel(devices=jax.local_devices())
    model = make_model(config)
    forward = dp.forward(
        lambda variables, x: model.apply(variables, x, method=model.encode).reshape(len(x), -1),
        key=("autoencoder.encode", model))
    variables = dp.put_replicated(state.net.variables())
    batch = dp.round_up(INFER_BATCH)
    features = []
    for b in data_lib.make_eval_iterator(source, batch_size=batch, image_size=m.image_size,
                                         channels=m.channels):
        z = np.asarray(forward(variables, dp.put_split(b["image"])))
        features.append(z[b["mask"] > 0])
    return np.concatenate(features).astype(np.float32), source.labels.astype(np.int64)


def extract_features(config, workdir: str | Path, split: str
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The `train.py features` hook: the latest checkpoint's encoder latents of a split."""
    config, state, _ = restore_for_inference(workdir, lambda _: sys.modules[__name__])
    features, labels = encode_split(state, config, split)
    m = config.model
    protocol = {"features": f"encoder latent ({m.latent_kind}, {m.latent_size} values)",
                "resolution": m.image_size, "preprocessing": "[-1, 1], no augmentation"}
    return features, labels, protocol


# ----------------------------------------------------------------------------- entry point


def make_task(config: ml_collections.ConfigDict) -> loop.Task:
    """What the shared loop needs to train an autoencoder."""
    summary: dict = {}
    evaluation = Evaluation(config, summary)

    def prepare(sources):
        source = sources["train"]
        evaluation.prepare(source)
        log.info("%d steps = %.1f epochs of %d examples", config.num_steps,
                 config.num_steps * config.batch_size / source.num_examples, source.num_examples)

    step = functools.partial(train_step, config=ml_collections.FrozenConfigDict(config))
    return loop.Task(
        create_state=functools.partial(create_state, config),
        stages=loop.single_stage(config, step),
        periodic={"eval": (config.eval_every, evaluation.evaluate),
                  "grid": (config.sample_every, evaluation.grid)},
        prepare=prepare,
        progress_metrics=("loss", "psnr_batch"),
        plot_metrics=("loss",),
        summary=summary,
        resumable=RESUMABLE,
        choices=CONFIG_CHOICES,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) an autoencoder in workdir, evaluating it; returns the run summary."""
    return loop.train(config, workdir, make_task(config))
