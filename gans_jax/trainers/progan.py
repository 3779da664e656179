"""ProGAN training (Karras et al. 2017): the growth schedule, the pure train step, sampling at
the current resolution, the growth strip, and the entry point.

The schedule (`schedule`) turns the config's per-resolution lists into `Phase`s: resolution 4
stabilises only; every later resolution fades in, then stabilises. Each resolution is one
`loop.Stage` with its own stream ("train": the same data order throughout, loaded at that
resolution, with that resolution's batch size), compiled once. Within a stage the fade-in
weight alpha = min(1, (step - stage start) / fade steps) is computed from the state's step
inside the compiled step, so it is a traced value: 0 at the stage's first step, rising
linearly, 1 from the stabilise phase on. `config.num_steps` is derived from the schedule.

One step, per device with the named axis `common_jax.parallel.AXIS`:
  1. the real batch faded by alpha (`models.progan.fade_reals`);
  2. G's forward pass once (kept as a VJP) on z drawn for the global batch from
     ``fold_in(key, step)``;
  3. D (the critic) updated on WGAN-GP: mean D(fake) - mean D(real) + lambda * gradient
     penalty + drift * mean D(real)^2;
  4. G updated through the updated D (-mean D(G(z))), reusing step 2's forward pass (1:1);
  5. G's moving average of the weights (used for every sample).
Gradients are averaged over devices; z and the penalty's interpolation weights are drawn for
the global batch and sliced, so the device count does not change the numbers as long as every
device's slice is a multiple of the minibatch-stddev group.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from common_jax import data as data_lib
from common_jax import loop, parallel
from common_jax.config_utils import COMPUTE_DTYPES, compute_dtype
from common_jax.errors import UserError
from common_jax.state import apply_gradients, create_net_state
from common_jax.writers import image_grid
from gans_jax import checkerboard, losses
from gans_jax.models import progan as models
from gans_jax.trainers.dcgan import GANState, ema_decay_at

log = logging.getLogger(__name__)

CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": tuple(COMPUTE_DTYPES),
    "parallel": parallel.MODES,
}
# Settings that may change when a run resumes: what the grids show and how often, and the
# precision the networks compute in (the state stays float32).
RESUMABLE = frozenset({"sample_every", "num_samples", "model.dtype"})
REFERENCE_IMAGES = 64  # real images per resolution the checkerboard meter is scaled by
GROWTH_SAMPLES = 8  # rows of the growth strip written at the end of training
SIZE_PROBES = 64  # image files whose size is checked against the final resolution


# ----------------------------------------------------------------------------- the schedule


@dataclasses.dataclass(frozen=True)
class Phase:
    """One resolution's stage: its fade-in steps (0 at 4x4), then its stabilise steps."""

    resolution: int
    batch_size: int
    fade_steps: int
    stable_steps: int
    start: int  # the number of steps before this stage

    @property
    def num_steps(self) -> int:
        return self.fade_steps + self.stable_steps


def _listed(config, key: str, expected: int, sizes: list[int], what: str) -> list[int]:
    values = [int(v) for v in config.schedule[key]]
    if len(values) != expected:
        raise UserError(f"schedule.{key} has {len(values)} entries but growing to "
                        f"{sizes[-1]}x{sizes[-1]} needs {expected} ({what}); set "
                        f"--config.schedule.{key} to {expected} values, as a tuple "
                        f"\"({', '.join(['...'] * expected)})\"")
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"schedule.{key} holds {bad[0]}; every entry must be at least 1: set "
                        f"--config.schedule.{key} to entries of 1 or more")
    return values


def schedule(config: ml_collections.ConfigDict) -> list[Phase]:
    """The stages of the config's growth; a one-line UserError if its lists do not add up."""
    sizes = models.resolutions(config.model.image_size)
    batches = _listed(config, "batch_sizes", len(sizes), sizes,
                      f"one per resolution {', '.join(map(str, sizes))}")
    fades = _listed(config, "fade_images", len(sizes) - 1, sizes,
                    "one per resolution after 4")
    stables = _listed(config, "stable_images", len(sizes), sizes, "one per resolution")
    phases, start = [], 0
    for i, (resolution, batch) in enumerate(zip(sizes, batches, strict=True)):
        fade = math.ceil(fades[i - 1] / batch) if i else 0
        phase = Phase(resolution, batch, fade, math.ceil(stables[i] / batch), start)
        phases.append(phase)
        start += phase.num_steps
    return phases


def total_steps(phases: list[Phase]) -> int:
    return phases[-1].start + phases[-1].num_steps


def images_shown(config: ml_collections.ConfigDict, step: int) -> int:
    """Training images D has seen after `step` steps (each phase has its own batch size)."""
    return sum(min(max(step - p.start, 0), p.num_steps) * p.batch_size
               for p in schedule(config))


def resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with num_steps derived from the schedule (0 -> all of it); refuses more steps
    than the schedule has."""
    total = total_steps(schedule(config))
    for key in ("mbstd_group", "fmap_base", "max_channels", "z_dim"):
        if config.model[key] < 1:
            raise UserError(f"model.{key} must be at least 1, got {config.model[key]}; set "
                            f"--config.model.{key} to 1 or more")
    if config.num_steps > total:
        raise UserError(f"num_steps {config.num_steps} is more than the schedule's {total} "
                        "steps (derived from schedule.*); leave --config.num_steps at 0 for "
                        "the whole schedule, or lengthen the schedule's phases")
    config = config.copy_and_resolve_references()
    config.num_steps = config.num_steps or total
    return config


def phase_at(phases: list[Phase], steps_done: int) -> tuple[Phase, float]:
    """The stage of the latest step of a state that has taken `steps_done` steps, and the alpha
    its generator shows now (a fresh state: 4x4)."""
    index = max(steps_done - 1, 0)
    phase = next((p for p in phases if index < p.start + p.num_steps), phases[-1])
    return phase, float(fade_alpha(steps_done, phase.start, phase.fade_steps))


def fade_alpha(step, stage_start: int, fade_steps: int):
    """min(1, (step - stage_start) / fade_steps): 0 at the stage's first step; 1 without a
    fade. `step` may be traced (the compiled step) or a Python int."""
    if fade_steps == 0:
        return jnp.ones((), jnp.float32)
    done = jnp.asarray(step - stage_start, jnp.float32)
    return jnp.clip(done / fade_steps, 0.0, 1.0)


# ----------------------------------------------------------------------------- models, state


def make_models(config: ml_collections.ConfigDict):
    m = config.model
    dtype = compute_dtype(m)
    g = models.Generator(image_size=m.image_size, channels=m.channels, fmap_base=m.fmap_base,
                         max_channels=m.max_channels, dtype=dtype)
    d = models.Discriminator(image_size=m.image_size, fmap_base=m.fmap_base,
                             max_channels=m.max_channels, mbstd_group=m.mbstd_group, dtype=dtype)
    return g, d


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    o = config.optimizer
    return optax.adam(o.lr, b1=o.b1, b2=o.b2, eps=o.eps)


def create_state(config: ml_collections.ConfigDict) -> GANState:
    """A fresh state holding every resolution's parameters, deterministic from the seed."""
    m = config.model
    g_model, d_model = make_models(config)
    tx = make_optimizer(config)
    key_g, key_d, key_train = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    final = m.image_size
    g_vars = g_model.init(key_g, jnp.zeros((1, m.z_dim)), resolution=final)
    d_vars = d_model.init(key_d, jnp.zeros((1, final, final, m.channels)), resolution=final)
    g = create_net_state(g_vars, tx)
    # A copy: the EMA must not share buffers with params (the step donates both).
    return GANState(g=g, d=create_net_state(d_vars, tx), g_ema=jax.tree.map(jnp.copy, g.params),
                    step=jnp.zeros((), jnp.int32), key=key_train)


def reset_optimizers(state: GANState, *, config) -> GANState:
    """Fresh Adam moments for both networks (a new resolution starts), the same tree."""
    tx = make_optimizer(config)
    return state.replace(g=state.g.replace(opt_state=tx.init(state.g.params)),
                         d=state.d.replace(opt_state=tx.init(state.d.params)))


# ----------------------------------------------------------------------------- the step


def train_step(state: GANState, batch: dict, *, config: ml_collections.ConfigDict,
               phase: Phase):
    """One D update and one G update at `phase`'s resolution on this device's batch slice."""
    g_model, d_model = make_models(config)
    tx = make_optimizer(config)
    resolution = phase.resolution
    alpha = fade_alpha(state.step, phase.start, phase.fade_steps)
    real = batch["image"]
    local_batch = real.shape[0]
    if resolution > 4:
        real = models.fade_reals(real, alpha)

    key_z, key_penalty = jax.random.split(jax.random.fold_in(state.key, state.step))
    z = jax.random.normal(key_z, (phase.batch_size, config.model.z_dim))
    z = parallel.local_batch_slice(z, local_batch)
    weights = jax.random.uniform(key_penalty, (phase.batch_size,), jnp.float32)
    weights = parallel.local_batch_slice(weights, local_batch)

    def generate(g_params):
        return g_model.apply({"params": g_params}, z, resolution=resolution, alpha=alpha)

    def critic(d_params, images):
        return d_model.apply({"params": d_params}, images, resolution=resolution, alpha=alpha)

    fake, g_vjp = jax.vjp(generate, state.g.params)  # G runs once: D on it, G through its VJP

    def d_loss_fn(d_params):
        detached = jax.lax.stop_gradient(fake)
        real_scores, fake_scores = critic(d_params, real), critic(d_params, detached)
        adversarial = losses.discriminator_loss("wasserstein", real_logits=real_scores,
                                                fake_logits=fake_scores)
        penalty = losses.gradient_penalty(functools.partial(critic, d_params), real=real,
                                          fake=detached, weights=weights)
        drift = losses.drift_penalty(real_logits=real_scores)
        loss = (adversarial + config.loss.gradient_penalty * penalty
                + config.loss.drift * drift)
        return loss, (real_scores.mean(), fake_scores.mean(), penalty, drift)

    (d_loss, (real_score, fake_score, penalty, drift)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state.d.params)
    d_grads = jax.lax.pmean(d_grads, parallel.AXIS)
    d = apply_gradients(state.d, d_grads, tx)

    def g_loss_fn(images):  # through the updated D
        return losses.generator_loss("wasserstein", fake_logits=critic(d.params, images))

    g_loss, fake_grads = jax.value_and_grad(g_loss_fn)(fake)
    (g_grads,) = g_vjp(fake_grads)
    g_grads = jax.lax.pmean(g_grads, parallel.AXIS)
    g = apply_gradients(state.g, g_grads, tx)
    decay = ema_decay_at(state.step, config.ema_decay)
    g_ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.g_ema, g.params)

    metrics = {
        "d_loss": d_loss, "g_loss": g_loss, "real_score": real_score, "fake_score": fake_score,
        "wasserstein": real_score - fake_score, "gradient_penalty": penalty, "drift": drift,
        "alpha": alpha, "resolution": jnp.asarray(resolution, jnp.float32),
        "g_grad_norm": optax.tree.norm(g_grads), "d_grad_norm": optax.tree.norm(d_grads),
        # 1.0 while the updated weights are finite; the loop stops the run otherwise
        "finite": parallel.tree_all_finite((g.params, d.params)).astype(jnp.float32),
    }
    metrics = jax.lax.pmean(metrics, parallel.AXIS)
    return GANState(g=g, d=d, g_ema=g_ema, step=state.step + 1, key=state.key), metrics


# ----------------------------------------------------------------------------- sampling


def sample_z(config: ml_collections.ConfigDict, num: int, seed: int = 0) -> jax.Array:
    """Fixed latent vectors, so grids from different steps are comparable."""
    return jax.random.normal(jax.random.PRNGKey(seed), (num, config.model.z_dim))


@functools.partial(jax.jit, static_argnames=("config", "resolution"))
def _generate(params, z, alpha, config, resolution: int) -> jax.Array:
    g_model, _ = make_models(config)
    return g_model.apply({"params": params}, z, resolution=resolution, alpha=alpha)


def generate_at(state: GANState, z, config, resolution: int, alpha: float = 1.0, *,
                use_ema: bool = True) -> np.ndarray:
    """G's images [N, R, R, C] at `resolution` with fade weight `alpha`, as a host array."""
    frozen = ml_collections.FrozenConfigDict(config)
    params = state.g_ema if use_ema else state.g.params
    return np.asarray(_generate(params, jnp.asarray(z), jnp.float32(alpha), frozen,
                                resolution))


def generate(state: GANState, z, config, *, use_ema: bool = True) -> np.ndarray:
    """Images in about [-1, 1] at the state's current resolution and fade weight (what
    `train.py sample` draws)."""
    phase, alpha = phase_at(schedule(config), int(state.step))
    return generate_at(state, z, config, phase.resolution, alpha, use_ema=use_ema)


def generate_batches(state: GANState, config, num: int, *, batch_size: int, seed: int = 1,
                     use_ema: bool = True):
    """`num` images in about [-1, 1] at the state's resolution and fade weight, from fixed
    latent vectors (`seed`), as host batches of `batch_size` (the last one cut): what the FID
    tools score. G has no batch statistics, so a sample does not depend on its batch."""
    phase, alpha = phase_at(schedule(config), int(state.step))
    z = np.asarray(sample_z(config, num, seed))
    for start in range(0, num, batch_size):
        chunk = z[start:start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]),
                                                 chunk.dtype)])  # one shape: one compile
        yield generate_at(state, padded, config, phase.resolution, alpha,
                          use_ema=use_ema)[:len(chunk)]


def growth_strip(state: GANState, config, *, num: int = GROWTH_SAMPLES,
                 seed: int = 0) -> np.ndarray:
    """The same z at every resolution reached (EMA G, each resolution's own toRGB, alpha = 1),
    nearest-upsampled to the current resolution: uint8 [num rows, one column per resolution]."""
    current, _ = phase_at(schedule(config), int(state.step))
    z = sample_z(config, num, seed)
    columns = []
    for resolution in models.resolutions(current.resolution):
        images = generate_at(state, z, config, resolution)
        factor = current.resolution // resolution
        columns.append(images.repeat(factor, axis=1).repeat(factor, axis=2))
    cells = np.stack(columns, axis=1).reshape(-1, *columns[0].shape[1:])  # row-major: z, R
    return image_grid(cells, columns=len(columns))


def save_growth_strip(state: GANState, config, path, *, num: int = GROWTH_SAMPLES,
                      seed: int = 0) -> Path:
    """Writes `growth_strip` as a PNG (enlarged to at least 64 pixels a cell)."""
    grid = growth_strip(state, config, num=num, seed=seed)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    current, _ = phase_at(schedule(config), int(state.step))
    scale = max(1, 64 // current.resolution)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


# ----------------------------------------------------------------------------- data checks


def smallest_side(source) -> int | None:
    """The shorter side of the smallest image among the first `SIZE_PROBES` of a source."""
    if source.images is not None:
        return int(min(source.images.shape[1:3]))
    sides = []
    for path in (source.paths or [])[:SIZE_PROBES]:
        with Image.open(path) as image:  # reads the header only
            sides.append(min(image.size))
    return min(sides) if sides else None


def check_image_size(source, config) -> None:
    """Refuses data smaller than the final resolution: upsampled images would teach the last
    stages blur, not detail."""
    side, final = smallest_side(source), config.model.image_size
    if side is not None and side < final:
        raise UserError(f"the images of {source.name} are {side} pixels on their shorter side, "
                        f"smaller than the final resolution {final}; set "
                        f"--config.model.image_size to {side} or less (4 * 2**k, with "
                        "schedule lists of its length), or use larger images")


# ----------------------------------------------------------------------------- the task


class SampleGrids:
    """The periodic action: a fixed-z grid of the EMA G at the current resolution (named by it)
    and the checkerboard meter against real images of that resolution; at the end, also the
    growth strip (growth.png)."""

    def __init__(self, config: ml_collections.ConfigDict, phases: list[Phase]):
        self.config, self.phases = config, phases
        self.z = sample_z(config, config.num_samples)
        self.fractions: dict[int, float] = {}

    def prepare(self, sources: dict) -> None:
        source = sources["train"]
        check_image_size(source, self.config)
        for phase in self.phases:
            images = next(data_lib.make_train_iterator(
                source, batch_size=min(REFERENCE_IMAGES, source.num_examples),
                image_size=phase.resolution, channels=self.config.model.channels,
                seed=self.config.seed + 1))["image"]
            self.fractions[phase.resolution] = float(
                checkerboard.aliasing_energy_fraction(images).mean())

    def __call__(self, state: GANState, step: int, writer, *, final: bool = False):
        phase, alpha = phase_at(self.phases, step)
        r = phase.resolution
        images = generate_at(state, self.z, self.config, r, alpha)
        writer.write_image_grid(step, f"samples_{r}x{r}", images, final=final)
        fraction = float(checkerboard.aliasing_energy_fraction(images).mean())
        writer.write_scalars(step, {"checkerboard": fraction / max(self.fractions[r], 1e-12)})
        if final and writer.primary:
            path = save_growth_strip(state, self.config, writer.workdir / "growth.png")
            log.info("growth strip (%s) written to %s", ", ".join(
                f"{s}x{s}" for s in models.resolutions(r)), path)


def make_stages(config: ml_collections.ConfigDict, phases: list[Phase]) -> list[loop.Stage]:
    """One stage per resolution: its stream, its step (alpha from the step) and, with
    optimizer.reset_per_stage, fresh Adam moments when it starts (not at 4x4)."""
    stages = []
    for phase in phases:
        r = phase.resolution
        stream = loop.Stream(data=config.data, batch_size=phase.batch_size, image_size=r,
                             channels=config.model.channels,
                             split=config.data.get("split", "train"), seed=config.seed)
        enter = (functools.partial(reset_optimizers, config=config)
                 if config.optimizer.reset_per_stage and r > 4 else None)
        stages.append(loop.Stage(f"{r}x{r}", phase.num_steps,
                                 functools.partial(train_step, config=config, phase=phase),
                                 {"train": stream}, enter=enter))
    return stages


def make_task(config: ml_collections.ConfigDict) -> loop.Task:
    """What the shared loop needs to train a ProGAN (config with num_steps resolved)."""
    frozen = ml_collections.FrozenConfigDict(config)
    phases = schedule(frozen)
    grids = SampleGrids(frozen, phases)
    return loop.Task(
        create_state=functools.partial(create_state, frozen),
        stages=make_stages(frozen, phases),
        periodic={"samples": (config.sample_every, grids)},
        prepare=grids.prepare,
        progress_metrics=("d_loss", "g_loss", "wasserstein", "alpha", "resolution"),
        plot_metrics=("d_loss", "g_loss", "wasserstein", "gradient_penalty"),
        resumable=RESUMABLE,
        choices=CONFIG_CHOICES,
    )


def describe_schedule(phases: list[Phase]) -> str:
    """One line per stage: resolution, batch, fade and stabilise steps and images."""
    return "; ".join(f"{p.resolution}x{p.resolution}: batch {p.batch_size}, fade "
                     f"{p.fade_steps} + stable {p.stable_steps} steps" for p in phases)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) a ProGAN in workdir through its whole schedule (or to num_steps)."""
    config = resolved(config)
    phases = schedule(config)
    log.info("ProGAN schedule, %d steps: %s", total_steps(phases), describe_schedule(phases))
    return loop.train(config, workdir, make_task(config))
