"""CycleGAN training (Zhu et al. 2017) as the reference implementation runs it: the
`CycleGANState` pytree, the image pools, the pure train step, `translate`, and the entry point.

Two domains, A and B, and four networks: G_ab (A -> B), G_ba (B -> A), D_a (real A vs G_ba's
fakes) and D_b (real B vs G_ab's fakes). (The reference names its discriminators by the
generator they judge, so its D_A is our D_b.)

One step, per device with the named axis `common_jax.parallel.AXIS`, on batches of both domains:
  1. G update (both generators, the discriminators frozen): adversarial terms
     (LSGAN by default), cycle L1 |G_ba(G_ab(a)) - a| and |G_ab(G_ba(b)) - b| weighted by
     lambda_a, lambda_b (10), identity L1 |G_ab(b) - b|, |G_ba(a) - a| weighted by
     identity * lambda (0.5 lambda);
  2. the step's fakes (made before the G update, as in the reference) go through one image pool
     per domain (`query_pool`), which hands back past fakes half of the time once full;
  3. D update on real images and the pooled fakes, D's loss halved.
Gradients and metrics are averaged over devices. The pools live in the state and are updated
inside the compiled step: every device gathers the fakes of the global batch, draws the pool's
random choices for the global batch from ``fold_in(key, step)``, updates its copy of the pool
identically and keeps its own rows, so N devices compute what one device computes.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from common_jax import data as data_lib
from common_jax import loop, optim, parallel
from common_jax.config_utils import COMPUTE_DTYPES, compute_dtype
from common_jax.errors import UserError
from common_jax.state import NetState, apply_gradients, create_net_state
from common_jax.writers import image_grid
from gans_jax import checkerboard, layers, losses
from gans_jax.models import cyclegan as models

log = logging.getLogger(__name__)

DIRECTIONS = ("a2b", "b2a")
# Images per translated batch (rounded up to the device count): every batch has this shape,
# so translating any number of images compiles once.
TRANSLATE_BATCH = 16
REFERENCE_IMAGES = 64  # real training images per domain the checkerboard meter is scaled by

# Every enumerated option -> its valid values, from the constants the code checks against;
# train.py and the loop refuse other values at start-up.
CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "model.upsample": layers.UPSAMPLE,
    "model.upsample_impl": layers._IMPLS,
    "model.g_norm": models.NORMS,
    "model.d_norm": models.NORMS,
    "model.dtype": tuple(COMPUTE_DTYPES),
    "loss.kind": losses.LOSSES,
    "parallel": parallel.MODES,
    "data.augment": tuple(data_lib.AUGMENTATIONS),
    "optimizer.name": optim.OPTIMIZERS,
    "optimizer.schedule": optim.SCHEDULES,
}

# Settings that may change when a run resumes: what the sample grids show and how often, and
# the precision the networks compute in (the state stays float32).
RESUMABLE = frozenset({"sample_every", "num_samples", "data.a.test_split", "data.b.test_split",
                       "model.dtype"})


@flax.struct.dataclass
class ImagePool:
    """Past fakes of one domain: the first `count` of `images` are filled."""

    images: jax.Array  # float32 [pool_size, S, S, C]
    count: jax.Array  # int32 scalar


@flax.struct.dataclass
class CycleGANState:
    """Everything a CycleGAN run needs to continue."""

    g_ab: NetState  # A -> B
    g_ba: NetState  # B -> A
    d_a: NetState  # real A vs G_ba's fakes
    d_b: NetState  # real B vs G_ab's fakes
    pool_a: ImagePool  # past fakes of domain A (G_ba's), for D_a
    pool_b: ImagePool  # past fakes of domain B (G_ab's), for D_b
    step: jax.Array  # int32 scalar: steps completed
    key: jax.Array  # raw uint32 PRNG key; each step folds in its step number


# ----------------------------------------------------------------------------- the image pool


def empty_pool(size: int, image_size: int, channels: int) -> ImagePool:
    return ImagePool(images=jnp.zeros((size, image_size, image_size, channels), jnp.float32),
                     count=jnp.zeros((), jnp.int32))


def draw_pool_choices(key: jax.Array, num: int, size: int) -> tuple[jax.Array, jax.Array]:
    """One coin in [0, 1) and one pool slot per fake: the pool's random choices for a batch."""
    key_coin, key_slot = jax.random.split(key)
    return (jax.random.uniform(key_coin, (num,)),
            jax.random.randint(key_slot, (num,), 0, max(size, 1)))


def query_pool(pool: ImagePool, fakes: jax.Array, coins: jax.Array,
               slots: jax.Array) -> tuple[ImagePool, jax.Array]:
    """The reference's ImagePool.query: fakes [N, S, S, C] -> (pool, images for D [N, S, S, C]).

    The fakes are taken in order. While the pool is not full, a fake is stored in the next free
    slot and returned. Once full, a fake whose coin is above 0.5 swaps places with the stored
    image in its slot (the stored one is returned), else the fake itself is returned. A later
    fake of the same batch may therefore return an earlier one. Size 0: the fakes themselves.
    """
    size = pool.images.shape[0]
    if size == 0:
        return pool, fakes

    def insert(carry, inputs):
        images, count = carry
        fake, coin, slot = inputs
        full = count >= size
        swap = full & (coin > 0.5)
        slot = jnp.where(full, slot, count)  # not full: the next free slot
        stored = jax.lax.dynamic_index_in_dim(images, slot, keepdims=False)  # [S, S, C]
        kept = jnp.where(full & ~swap, stored, fake)  # what the slot holds afterwards
        images = jax.lax.dynamic_update_index_in_dim(images, kept, slot, 0)
        return (images, jnp.minimum(count + 1, size)), jnp.where(swap, stored, fake)

    fakes = fakes.astype(pool.images.dtype)
    (images, count), returned = jax.lax.scan(insert, (pool.images, pool.count),
                                             (fakes, coins, slots))
    return ImagePool(images=images, count=count), returned


def pooled_fakes(pool: ImagePool, fakes: jax.Array, key: jax.Array) -> tuple[ImagePool, jax.Array]:
    """This device's fakes [b, ...] through the pool, as one device would pass the global batch:
    gathered from every device, queried with choices drawn for the global batch, sliced back."""
    if pool.images.shape[0] == 0:
        return pool, fakes
    everyone = jax.lax.all_gather(fakes, parallel.AXIS, tiled=True)  # [N, S, S, C], N = global
    coins, slots = draw_pool_choices(key, everyone.shape[0], pool.images.shape[0])
    pool, returned = query_pool(pool, everyone, coins, slots)
    return pool, parallel.local_batch_slice(returned, fakes.shape[0])


# ----------------------------------------------------------------------------- models, state


def make_generator(config: ml_collections.ConfigDict) -> models.ResnetGenerator:
    m = config.model
    return models.ResnetGenerator(channels=m.channels, width=m.g_width, num_blocks=m.g_blocks,
                                  upsample=m.upsample, upsample_impl=m.upsample_impl,
                                  norm=m.g_norm, dtype=compute_dtype(m))


def make_discriminator(config: ml_collections.ConfigDict) -> models.PatchDiscriminator:
    m = config.model
    return models.PatchDiscriminator(width=m.d_width, num_layers=m.d_layers, norm=m.d_norm,
                                     slope=m.d_slope, dtype=compute_dtype(m))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The one optimizer of all four networks (the paper: Adam 2e-4, beta1 0.5, constant for
    the first half, then linear to zero)."""
    return optim.make_optimizer(config.optimizer, config.num_steps)


def create_state(config: ml_collections.ConfigDict) -> CycleGANState:
    """A fresh state, deterministic from ``config.seed``."""
    m = config.model
    g_model, d_model = make_generator(config), make_discriminator(config)
    tx = make_optimizer(config)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), 5)
    images = jnp.zeros((1, m.image_size, m.image_size, m.channels))
    nets = [create_net_state(model.init(key, images), tx)
            for model, key in zip((g_model, g_model, d_model, d_model), keys[:4], strict=True)]
    return CycleGANState(*nets, pool_a=empty_pool(config.pool_size, m.image_size, m.channels),
                         pool_b=empty_pool(config.pool_size, m.image_size, m.channels),
                         step=jnp.zeros((), jnp.int32), key=keys[4])


# ----------------------------------------------------------------------------- losses

# The reference's criteria: G's adversarial term is the plain criterion (mean squared distance
# to 1 for LSGAN) and D's loss is half the sum of its real and fake terms. gans_jax.losses' LSGAN
# losses carry Mao et al.'s 1/2 on every term already, so LSGAN takes G x 2 and D x 1; the other
# kinds take G x 1 and D x 1/2.
_G_SCALE = {"lsgan": 2.0}
_D_SCALE = {"lsgan": 1.0}


def generator_adversarial(kind: str, logits: jax.Array) -> jax.Array:
    """logits [B, h, w, 1] of D on fakes -> G's adversarial loss (mean over every patch)."""
    return _G_SCALE.get(kind, 1.0) * losses.generator_loss(kind, fake_logits=logits)


def discriminator_adversarial(kind: str, real: jax.Array, fake: jax.Array,
                              real_label: float) -> jax.Array:
    """D's halved loss on logits [B, h, w, 1] of real images and of (pooled) fakes."""
    return _D_SCALE.get(kind, 0.5) * losses.discriminator_loss(
        kind, real_logits=real, fake_logits=fake, real_label=real_label)


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


# ----------------------------------------------------------------------------- the step


def generator_losses(g_params, d_params, real_a, real_b, *, config):
    """(G's total loss, (fake_a, fake_b, metrics)) on this device's batches [b, S, S, C].

    Each generator runs once on its domain's images and, for the identity term, the other
    domain's, concatenated along the batch (instance norm is per image, so this is the same as
    two calls), then once on the other generator's fakes.
    """
    g_model, d_model = make_generator(config), make_discriminator(config)
    (p_ab, p_ba), (d_a, d_b) = g_params, d_params
    loss_cfg = config.loss
    identity = loss_cfg.identity > 0

    def run(params, *batches):  # one generator pass over batches concatenated
        out = g_model.apply({"params": params}, jnp.concatenate(batches))
        return jnp.split(out, len(batches)) if len(batches) > 1 else [out]

    fake_b, *idt_b = run(p_ab, real_a, *([real_b] if identity else []))  # G_ab(a), G_ab(b)
    fake_a, *idt_a = run(p_ba, real_b, *([real_a] if identity else []))  # G_ba(b), G_ba(a)
    (rec_a,), (rec_b,) = run(p_ba, fake_b), run(p_ab, fake_a)  # [b, S, S, C] each
    metrics = {
        "g_adv_ab": generator_adversarial(loss_cfg.kind, d_model.apply({"params": d_b}, fake_b)),
        "g_adv_ba": generator_adversarial(loss_cfg.kind, d_model.apply({"params": d_a}, fake_a)),
        "cycle_a": l1(rec_a, real_a), "cycle_b": l1(rec_b, real_b),
        # how far each generator moves its input: near 0 means it collapsed to the identity
        "change_ab": l1(fake_b, real_a), "change_ba": l1(fake_a, real_b),
    }
    total = (metrics["g_adv_ab"] + metrics["g_adv_ba"] + loss_cfg.lambda_a * metrics["cycle_a"]
             + loss_cfg.lambda_b * metrics["cycle_b"])
    if identity:
        metrics["idt_a"], metrics["idt_b"] = l1(idt_a[0], real_a), l1(idt_b[0], real_b)
        total += loss_cfg.identity * (loss_cfg.lambda_a * metrics["idt_a"]
                                      + loss_cfg.lambda_b * metrics["idt_b"])
    return total, (fake_a, fake_b, metrics)


def discriminator_loss(d_params, real, fake, *, config):
    """(D's halved loss, (mean real logit, mean fake logit)); one pass over real and fake."""
    logits = make_discriminator(config).apply({"params": d_params},
                                              jnp.concatenate([real, fake]))  # [2b, h, w, 1]
    real_logits, fake_logits = jnp.split(logits, 2)
    loss = discriminator_adversarial(config.loss.kind, real_logits, fake_logits,
                                     config.loss.real_label)
    return loss, (real_logits.mean(), fake_logits.mean())


def train_step(state: CycleGANState, batch: dict, *, config: ml_collections.ConfigDict):
    """One G update (both generators) then one D update (both discriminators) on this device's
    slices of ``batch = {"a": {"image": ...}, "b": {"image": ...}}``."""
    tx = make_optimizer(config)
    real_a, real_b = batch["a"]["image"], batch["b"]["image"]  # [b, S, S, C] each
    key_a, key_b = jax.random.split(jax.random.fold_in(state.key, state.step))

    # ---- generators, discriminators frozen
    g_params = (state.g_ab.params, state.g_ba.params)
    d_params = (state.d_a.params, state.d_b.params)
    (g_loss, (fake_a, fake_b, metrics)), g_grads = jax.value_and_grad(
        generator_losses, has_aux=True)(g_params, d_params, real_a, real_b, config=config)
    g_grads = jax.lax.pmean(g_grads, parallel.AXIS)
    g_ab, g_ba = (apply_gradients(net, grads, tx)
                  for net, grads in zip((state.g_ab, state.g_ba), g_grads, strict=True))

    # ---- discriminators on real images and pooled fakes (made before the G update)
    pool_a, pooled_a = pooled_fakes(state.pool_a, fake_a, key_a)
    pool_b, pooled_b = pooled_fakes(state.pool_b, fake_b, key_b)
    d_step = jax.value_and_grad(discriminator_loss, has_aux=True)
    (d_a_loss, (d_a_real, d_a_fake)), d_a_grads = d_step(state.d_a.params, real_a, pooled_a,
                                                         config=config)
    (d_b_loss, (d_b_real, d_b_fake)), d_b_grads = d_step(state.d_b.params, real_b, pooled_b,
                                                         config=config)
    d_grads = jax.lax.pmean((d_a_grads, d_b_grads), parallel.AXIS)
    d_a, d_b = (apply_gradients(net, grads, tx)
                for net, grads in zip((state.d_a, state.d_b), d_grads, strict=True))

    metrics.update({
        "g_loss": g_loss, "d_a_loss": d_a_loss, "d_b_loss": d_b_loss,
        "d_a_real": d_a_real, "d_a_fake": d_a_fake, "d_b_real": d_b_real, "d_b_fake": d_b_fake,
        "g_grad_norm": optax.tree.norm(g_grads), "d_grad_norm": optax.tree.norm(d_grads),
        "lr": optim.make_schedule(config.optimizer, config.num_steps)(state.step),
        # 1.0 while the updated weights are finite; the loop stops the run otherwise
        "finite": parallel.tree_all_finite(
            (g_ab.params, g_ba.params, d_a.params, d_b.params)).astype(jnp.float32),
    })
    metrics = jax.lax.pmean(metrics, parallel.AXIS)
    new_state = CycleGANState(g_ab=g_ab, g_ba=g_ba, d_a=d_a, d_b=d_b, pool_a=pool_a,
                              pool_b=pool_b, step=state.step + 1, key=state.key)
    return new_state, metrics


# ----------------------------------------------------------------------------- inference


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction '{direction}'; use a2b (domain A to B) or b2a")


def translate(state: CycleGANState, images, config: ml_collections.ConfigDict, *,
              direction: str = "a2b") -> np.ndarray:
    """images [N, S, S, C] float32 in [-1, 1] (host) -> the other domain's, same shape (host).

    Data-parallel over this process's devices (`parallel.DataParallel.forward`): batches of
    `TRANSLATE_BATCH` images (fewer for fewer images, rounded up to the device count), the last
    one padded, so it compiles once. Instance norm uses each image's own statistics, so neither
    the batch nor the padding changes any image's result.
    """
    check_direction(direction)
    images = np.asarray(images, np.float32)
    m = config.model
    if images.ndim != 4 or images.shape[-1] != m.channels:
        raise UserError(f"translate takes images [N, S, S, {m.channels}]; got shape "
                        f"{images.shape}; convert them to the run's {m.channels} channels")
    if len(images) == 0:
        return images
    dp = parallel.DataParallel(devices=jax.local_devices())
    g_model = make_generator(config)
    forward = dp.forward(lambda params, x: g_model.apply({"params": params}, x),
                         key=("cyclegan.translate", g_model))
    net = state.g_ab if direction == "a2b" else state.g_ba
    params = dp.put_replicated(net.params)
    per_batch = dp.round_up(min(len(images), TRANSLATE_BATCH))
    out = []
    for start in range(0, len(images), per_batch):
        chunk = images[start:start + per_batch]
        padded = np.concatenate([chunk, np.zeros((per_batch - len(chunk), *chunk.shape[1:]),
                                                 np.float32)])
        out.append(np.asarray(forward(params, dp.put_split(padded)))[:len(chunk)])
    return np.concatenate(out)


def output_names(paths: list[str], direction: str) -> list[str]:
    """'<stem>_<direction>.png' per input; a stem seen before gets the input's index too."""
    names, seen = [], set()
    for i, path in enumerate(paths):
        name = f"{Path(path).stem}_{direction}.png"
        if name in seen:
            name = f"{Path(path).stem}_{i}_{direction}.png"
        seen.add(name)
        names.append(name)
    return names


def translate_files(state: CycleGANState, config: ml_collections.ConfigDict, paths: list[str],
                    out_dir: str | Path, *, direction: str = "a2b") -> list[Path]:
    """Translates image files (read as in training, at the run's size) into one PNG each in
    `out_dir`; returns the written paths."""
    check_direction(direction)
    images = data_lib.load_image_files(paths, image_size=config.model.image_size,
                                       channels=config.model.channels)
    translated = translate(state, images, config, direction=direction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image, name in zip(translated, output_names(list(map(str, paths)), direction),
                           strict=True):
        pixels = np.clip((image + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)  # [S, S, C]
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out_dir / name)
        written.append(out_dir / name)
    return written


# ----------------------------------------------------------------------------- periodic grids


def triplet_grid(images: list[np.ndarray], min_side: int = 96) -> np.ndarray:
    """Rows of [x | y | z] (each [N, S, S, C] in [-1, 1]) as one image [1, H, W, C] in [-1, 1],
    small images enlarged (nearest) so that a cell is at least `min_side` pixels."""
    scale = max(1, min_side // images[0].shape[1])
    rows = np.stack(images, axis=1).reshape(-1, *images[0].shape[1:])  # [3N, S, S, C]
    rows = rows.repeat(scale, axis=1).repeat(scale, axis=2)
    grid = image_grid(rows, columns=len(images))  # uint8 [H, W, C]
    return (grid.astype(np.float32) / 127.5 - 1.0)[None]


def domain_test_images(section, config: ml_collections.ConfigDict) -> np.ndarray:
    """The first `num_samples` images of a domain's test split [n, S, S, C] (fixed, so grids of
    different steps are comparable)."""
    source = data_lib.load_source(section, split=section.test_split)
    n = min(config.num_samples, source.num_examples)
    batch = next(data_lib.make_eval_iterator(source, batch_size=n,
                                             image_size=config.model.image_size,
                                             channels=config.model.channels))
    return batch["image"][:n]


def reference_fraction(source, config: ml_collections.ConfigDict) -> float:
    """The mean checkerboard energy fraction of real training images of one domain."""
    n = min(REFERENCE_IMAGES, source.num_examples)
    images = next(data_lib.make_train_iterator(
        source, batch_size=n, image_size=config.model.image_size,
        channels=config.model.channels, seed=config.seed + 2))["image"]
    return float(checkerboard.aliasing_energy_fraction(images).mean())


def source_channels(source) -> int | None:
    """The channel count of a source's images (its first file's for files), alpha dropped."""
    if source.images is not None:
        channels = source.images.shape[-1]
    elif source.paths:
        with Image.open(source.paths[0]) as image:
            channels = len(image.getbands())
    else:
        return None
    return {2: 1, 4: 3}.get(channels, channels)


def warn_channel_mismatch(sources: dict, config: ml_collections.ConfigDict) -> None:
    channels = {name: source_channels(source) for name, source in sources.items()}
    if channels["a"] != channels["b"]:
        log.warning("domain a's images have %s channel(s) and domain b's %s; both are converted "
                    "to model.channels = %d", channels["a"], channels["b"],
                    config.model.channels)


class SampleGrids:
    """The periodic action: A | G_ab(A) | G_ba(G_ab(A)) and B | G_ba(B) | G_ab(G_ba(B)) grids on
    fixed test images, and the checkerboard meter of each generator's outputs."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.images: dict[str, np.ndarray] = {}
        self.fractions: dict[str, float] = {}

    def prepare(self, sources: dict) -> None:
        warn_channel_mismatch(sources, self.config)
        for name in ("a", "b"):
            self.images[name] = domain_test_images(self.config.data[name], self.config)
            self.fractions[name] = reference_fraction(sources[name], self.config)

    def __call__(self, state: CycleGANState, step: int, writer, *, final: bool = False):
        scalars = {}
        for direction, (source, target) in zip(DIRECTIONS, (("a", "b"), ("b", "a")),
                                                strict=True):
            back = DIRECTIONS[1 - DIRECTIONS.index(direction)]
            x = self.images[source]
            y = translate(state, x, self.config, direction=direction)
            z = translate(state, y, self.config, direction=back)
            writer.write_image_grid(step, direction, triplet_grid([x, y, z]), final=final)
            fraction = float(checkerboard.aliasing_energy_fraction(y).mean())
            scalars[f"checkerboard_{direction}"] = fraction / max(self.fractions[target], 1e-12)
        writer.write_scalars(step, scalars)


# ----------------------------------------------------------------------------- the task


def make_streams(config: ml_collections.ConfigDict) -> dict[str, loop.Stream]:
    """Streams "a" and "b": each domain's training split, its own order (seed) and jitter."""
    m, d = config.model, config.data
    return {name: loop.Stream(data=d[name], batch_size=config.batch_size,
                              image_size=m.image_size, channels=m.channels,
                              split=d[name].split, augment=d.augment, seed=config.seed + i,
                              load_size=d.load_size)
            for i, name in enumerate(("a", "b"))}


def make_task(config: ml_collections.ConfigDict) -> loop.Task:
    """What the shared loop needs to train a CycleGAN."""
    frozen = ml_collections.FrozenConfigDict(config)
    # Shapes are checked before any data is read (a too-small image is a config mistake).
    models.check_generator_size(config.model.image_size)
    models.check_discriminator_size(config.model.image_size, config.model.d_layers)
    grids = SampleGrids(frozen)
    step = functools.partial(train_step, config=frozen)
    return loop.Task(
        create_state=functools.partial(create_state, frozen),
        stages=[loop.Stage("train", config.num_steps, step, make_streams(frozen))],
        periodic={"samples": (config.sample_every, grids)},
        prepare=grids.prepare,
        progress_metrics=("g_loss", "d_a_loss", "d_b_loss", "cycle_a", "cycle_b"),
        plot_metrics=("g_loss", "d_a_loss", "d_b_loss", "cycle_a", "cycle_b", "idt_a",
                      "idt_b"),
        resumable=RESUMABLE,
        choices=CONFIG_CHOICES,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) a CycleGAN in workdir; returns the run summary."""
    return loop.train(config, workdir, make_task(config))
