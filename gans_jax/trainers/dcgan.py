"""DCGAN training: the `GANState` pytree, the pure train step, sampling, and the entry point.

Scores of the EMA generator's samples (judge and/or Inception FID, KID, mode coverage) are a
periodic action when the config's `metrics` section asks for them (`gans_jax.evaluation`), and
`evaluate_checkpoint` serves `train.py eval`.

One step, per device with the named axis `common_jax.parallel.AXIS`:
  1. G's forward pass once (kept as a VJP) on z drawn from ``fold_in(key, step)``;
  2. D update on the real batch and the detached fake batch;
  3. G update through the updated D (non-saturating loss), reusing step 1's forward pass;
  4. G's moving average (EMA) of the weights, moved on G's updates only (n_critic > 1: every
     n_critic-th step).
Gradients and batch-norm statistics are averaged over devices, so N devices compute what one
device computes on the whole batch.

A config's `population` section trains K DCGANs side by side (`common_jax.population`): the
step is vmapped over the members, the keys in POPULATION_KEYS may differ per member, and
samples, scores and the best member are per member.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common_jax import activations, loop, parallel, population
from common_jax import data as data_lib
from common_jax.config_utils import COMPUTE_DTYPES, compute_dtype
from common_jax.errors import UserError
from common_jax.state import NetState, apply_gradients, create_net_state
from gans_jax import checkerboard, evaluation, layers, losses
from gans_jax.models.dcgan import ARCHITECTURES, Discriminator, Generator

log = logging.getLogger(__name__)

# Every enumerated option -> its valid values, taken from the constants the code checks against
# so that they cannot drift apart; train.py and the training loop refuse other values at
# start-up (common_jax.config_utils.check_choices) instead of deep inside tracing.
CONFIG_CHOICES: dict[str, tuple[str, ...]] = {
    "model.upsample": layers.UPSAMPLE,
    "model.upsample_impl": layers._IMPLS,
    "model.downsample": layers.DOWNSAMPLE,
    "model.g_norm": layers.NORMS,
    "model.d_norm": layers.NORMS,
    "model.g_activation": activations.ACTIVATIONS + tuple(activations.ALIASES),
    "model.d_activation": activations.ACTIVATIONS + tuple(activations.ALIASES),
    "model.dtype": tuple(COMPUTE_DTYPES),
    "loss.kind": losses.LOSSES,
    "parallel": parallel.MODES,
    "metrics.resize": evaluation.inception_lib.RESIZE_METHODS,
    "metrics.class_reference": evaluation.judge_lib.CLASS_REFERENCES,
}


# Settings that may change when a run resumes: how often samples are drawn, how the run is
# scored (the whole `metrics` section) and the precision G and D compute in (the state stays
# float32, and runs saved before the setting existed computed in float32).
RESUMABLE = frozenset({"sample_every", "metrics", "model.dtype"})

# Settings a population (`common_jax.population`) may give each member its own value of: the
# step reads them as traced scalars, so one compiled step serves every member.
POPULATION_KEYS = ("optimizer.g_lr", "optimizer.d_lr", "optimizer.b1", "optimizer.b2",
                   "loss.gradient_penalty", "loss.r1", "loss.drift", "ema_decay")


@flax.struct.dataclass
class GANState:
    """Everything a GAN run needs to continue: both networks, G's EMA weights, step, key."""

    g: NetState
    d: NetState
    g_ema: Any  # moving average of g.params, used for samples
    step: jax.Array  # int32 scalar: steps completed
    key: jax.Array  # raw uint32 PRNG key; each step folds in its step number


def make_models(config: ml_collections.ConfigDict, axis_name: str | None = None):
    """The generator and discriminator for a config (axis_name syncs batch norm)."""
    m = config.model
    dtype = compute_dtype(m)
    # Only the CIFAR-10 configs name an architecture; the others (and older runs) have no key.
    architecture = m.get("architecture", "dcgan")
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown model.architecture '{architecture}'; set "
                        f"--config.model.architecture to one of: {', '.join(ARCHITECTURES)}")
    g = Generator(image_size=m.image_size, channels=m.channels, width=m.g_width,
                  axis_name=axis_name, upsample=m.upsample, upsample_impl=m.upsample_impl,
                  norm=m.g_norm, activation=m.g_activation, dtype=dtype,
                  architecture=architecture)
    d = Discriminator(image_size=m.image_size, width=m.d_width, axis_name=axis_name,
                      downsample=m.downsample, norm=m.d_norm, spectral_norm=m.d_spectral_norm,
                      activation=m.d_activation, slope=m.d_slope, dtype=dtype,
                      architecture=architecture)
    return g, d


def make_optimizers(config: ml_collections.ConfigDict):
    """Adam for G and for D (the paper: lr 2e-4, beta1 0.5)."""
    o = config.optimizer
    return (optax.adam(o.g_lr, b1=o.b1, b2=o.b2), optax.adam(o.d_lr, b1=o.b1, b2=o.b2))


def create_state(config: ml_collections.ConfigDict) -> GANState:
    """A fresh state, deterministic from ``config.seed`` (a population: every member's, from
    its own seed, stacked; `common_jax.population`)."""
    if population.enabled(config):
        return population.create_state(config, create_state)
    g_model, d_model = make_models(config)
    g_tx, d_tx = make_optimizers(config)
    key_g, key_d, key_train = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    z = jnp.zeros((1, config.model.z_dim))
    g_vars = g_model.init(key_g, z, train=False)
    images = jnp.zeros((1, config.model.image_size, config.model.image_size,
                        config.model.channels))
    d_vars = d_model.init(key_d, images, train=False)
    g = create_net_state(g_vars, g_tx)
    # A copy: the EMA must not share buffers with params (the step donates both).
    return GANState(g=g, d=create_net_state(d_vars, d_tx), g_ema=jax.tree.map(jnp.copy, g.params),
                    step=jnp.zeros((), jnp.int32), key=key_train)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay that starts low so the average is not dominated by the random init."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def instance_noise_at(step: jax.Array, config) -> jax.Array:
    """Std of the Gaussian noise added to D's inputs, annealed linearly to 0 (if configured)."""
    std, steps = config.instance_noise, config.instance_noise_steps
    if not std:
        return jnp.zeros((), jnp.float32)
    if not steps:
        return jnp.asarray(std, jnp.float32)
    return std * jnp.maximum(0.0, 1.0 - step.astype(jnp.float32) / steps)


def train_step(state: GANState, batch: dict, *, config: ml_collections.ConfigDict):
    """One D update, and one G update every ``n_critic`` steps, on this device's batch slice."""
    g_model, d_model = make_models(config, axis_name=parallel.AXIS)
    g_tx, d_tx = make_optimizers(config)
    loss_cfg = config.loss
    real = batch["image"]
    local_batch = real.shape[0]

    key = jax.random.fold_in(state.key, state.step)
    key_z, key_noise, key_penalty = jax.random.split(key, 3)
    z = jax.random.normal(key_z, (config.batch_size, config.model.z_dim))
    z = parallel.local_batch_slice(z, local_batch)

    def generate(g_params):
        fake, updates = g_model.apply(state.g.variables(g_params), z, train=True,
                                      mutable=["batch_stats"])
        return fake, updates["batch_stats"]

    # G's forward pass runs once: D trains on its detached output, G on its VJP.
    fake, g_vjp, g_batch_stats = jax.vjp(generate, state.g.params, has_aux=True)

    # Instance noise (Sonderby et al. 2016): both of D's inputs get the same noise level. Drawn
    # for the global batch (each device keeps its slice, so any device count gives the same
    # numbers), and only when configured: image-sized normals cost a visible share of a CPU step.
    real_noise = fake_noise = 0.0
    if config.instance_noise > 0:
        noise_std = instance_noise_at(state.step, config)
        noise = jax.random.normal(key_noise, (2, config.batch_size, *real.shape[1:]))
        real_noise, fake_noise = (noise_std * parallel.local_batch_slice(n, local_batch)
                                  for n in noise)

    def discriminate(d_params, batch_stats, images):
        logits, updates = d_model.apply({"params": d_params, "batch_stats": batch_stats},
                                        images, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def d_loss_fn(d_params):
        real_logits, stats = discriminate(d_params, state.d.batch_stats, real + real_noise)
        fake_in = jax.lax.stop_gradient(fake) + fake_noise
        fake_logits, stats = discriminate(d_params, stats, fake_in)
        loss = losses.discriminator_loss(loss_cfg.kind, real_logits=real_logits,
                                         fake_logits=fake_logits, real_label=loss_cfg.real_label)

        def critic(images):  # statistics of penalty batches are not kept
            return discriminate(d_params, stats, images)[0]

        if population.active(loss_cfg.gradient_penalty):
            # Interpolation weights drawn for the global batch and sliced, as z is: any
            # device count computes the same penalty.
            weights = jax.random.uniform(key_penalty, (config.batch_size,), jnp.float32)
            loss += loss_cfg.gradient_penalty * losses.gradient_penalty(
                critic, real=real, fake=jax.lax.stop_gradient(fake),
                weights=parallel.local_batch_slice(weights, local_batch))
        if population.active(loss_cfg.r1):
            loss += 0.5 * loss_cfg.r1 * losses.r1_penalty(critic, real=real)
        if population.active(loss_cfg.drift):
            loss += loss_cfg.drift * losses.drift_penalty(real_logits=real_logits)
        return loss, (stats, real_logits, fake_logits)

    (d_loss, (d_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state.d.params)
    d_grads = jax.lax.pmean(d_grads, parallel.AXIS)
    d = apply_gradients(state.d, d_grads, d_tx)

    def g_loss_fn(fake_images):
        logits, stats = discriminate(d.params, d_stats, fake_images + fake_noise)
        return losses.generator_loss(loss_cfg.kind, fake_logits=logits), stats

    def update_g(_):  # through the updated D, reusing G's forward pass
        (g_loss, stats), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
        (g_grads,) = g_vjp(fake_grads)
        g_grads = jax.lax.pmean(g_grads, parallel.AXIS)
        g = apply_gradients(state.g, g_grads, g_tx)
        # The EMA moves with G's updates: `step // n_critic` of them came before this one.
        decay = ema_decay_at(state.step // config.n_critic, config.ema_decay)
        g_ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.g_ema, g.params)
        return g, g_ema, stats, g_loss, optax.tree.norm(g_grads)

    def skip_g(_):  # D-only step (n_critic > 1): G and its EMA stay; still report G's loss
        g_loss, stats = g_loss_fn(fake)
        return state.g, state.g_ema, stats, g_loss, jnp.zeros((), jnp.float32)

    if config.n_critic == 1:
        g, g_ema, d_stats, g_loss, g_grad_norm = update_g(None)
    else:
        due = (state.step + 1) % config.n_critic == 0
        g, g_ema, d_stats, g_loss, g_grad_norm = jax.lax.cond(due, update_g, skip_g, None)
    g = g.replace(batch_stats=g_batch_stats)

    metrics = {
        "d_loss": d_loss, "g_loss": g_loss,
        "d_real": jax.nn.sigmoid(real_logits).mean(),  # D(x)
        "d_fake": jax.nn.sigmoid(fake_logits).mean(),  # D(G(z)) before D's update
        "real_score": real_logits.mean(), "fake_score": fake_logits.mean(),  # raw critic
        "g_grad_norm": g_grad_norm, "d_grad_norm": optax.tree.norm(d_grads),
        # 1.0 while the updated weights are finite; the loop stops the run otherwise
        "finite": parallel.tree_all_finite((g.params, d.params)).astype(jnp.float32),
    }
    metrics = jax.lax.pmean(metrics, parallel.AXIS)
    new_state = GANState(g=g, d=d.replace(batch_stats=d_stats), g_ema=g_ema,
                         step=state.step + 1, key=state.key)
    return new_state, metrics


def sample_z(config: ml_collections.ConfigDict, num: int, seed: int = 0) -> jax.Array:
    """Fixed latent vectors, so grids from different steps are comparable."""
    return jax.random.normal(jax.random.PRNGKey(seed), (num, config.model.z_dim))


@functools.partial(jax.jit, static_argnames=("config", "use_ema"))
def _generate(state: GANState, z: jax.Array, config, use_ema: bool) -> jax.Array:
    g_model, _ = make_models(config)
    params = state.g_ema if use_ema else state.g.params
    # Batch statistics of the sample batch, as the reference DCGAN samples; the running
    # averages belong to the live weights, not to the EMA weights.
    images, _ = g_model.apply({"params": params, "batch_stats": state.g.batch_stats}, z,
                              train=True, mutable=["batch_stats"])
    return images


def generate(state: GANState, z: jax.Array, config, *, use_ema: bool = True) -> np.ndarray:
    """Images in [-1, 1] for latent vectors z, as a host array."""
    frozen = ml_collections.FrozenConfigDict(config)
    return np.asarray(_generate(state, z, frozen, use_ema))


def generate_batches(state: GANState, config, num: int, *, batch_size: int,
                     seed: int = evaluation.SAMPLE_SEED, devices=None,
                     use_ema: bool = True) -> Iterator[np.ndarray]:
    """`num` images in [-1, 1] from fixed latent vectors, as host batches, data-parallel.

    Each batch of z is split over `devices` (default: this process's) with the weights
    replicated (`parallel.DataParallel.forward`); batch norm averages its statistics over the
    devices, so each batch gets the statistics of the whole batch as on one device. Every batch
    has the same size (`batch_size` rounded up to a multiple of the devices), so it compiles
    once and each sample sees the same batch statistics; the surplus of the last batch is
    dropped.
    """
    dp = parallel.DataParallel(devices=devices if devices is not None else jax.local_devices())
    g_model, _ = make_models(config, axis_name=parallel.AXIS)

    def per_device(variables, z):
        # Batch statistics of the sample batch, as the reference DCGAN samples; the running
        # averages belong to the live weights, not to the EMA weights.
        images, _ = g_model.apply(variables, z, train=True, mutable=["batch_stats"])
        return images

    forward = dp.forward(per_device, key=("dcgan.generate_batches", g_model))
    params = state.g_ema if use_ema else state.g.params
    variables = dp.put_replicated({"params": params, "batch_stats": state.g.batch_stats})
    per_batch = dp.round_up(batch_size)
    z = np.asarray(sample_z(config, -(-num // per_batch) * per_batch, seed))
    for start in range(0, num, per_batch):
        images = forward(variables, dp.put_split(z[start:start + per_batch]))
        yield np.asarray(images)[:num - start]


def reference_images(source, config, num: int = 256) -> np.ndarray:
    """A fixed set of real training images (for normalising image statistics)."""
    num = min(num, source.num_examples)
    batches = data_lib.make_train_iterator(
        source, batch_size=num, image_size=config.model.image_size,
        channels=config.model.channels, seed=config.seed + 1)
    return next(batches)["image"]


def make_task(config: ml_collections.ConfigDict) -> loop.Task:
    """What the shared loop needs to train a DCGAN (or a population of them)."""
    spec = population.check(config, POPULATION_KEYS)  # before anything touches JAX
    fixed_z = sample_z(config, config.num_samples)
    # What generation compiles for: one config for every member (it reads no per-member key).
    shared = population.base_config(config) if spec.members else config
    reference = {}

    def prepare(source):
        reference["fraction"] = float(checkerboard.aliasing_energy_fraction(
            reference_images(source, config)).mean())

    def write_samples(state, step: int, writer, *, final: bool = False):
        # A population writes one grid per member: samples/member3/samples_<step>.png.
        for index, member in population.each(state):
            images = generate(member, fixed_z, shared)
            writer.write_image_grid(step, population.name(index, "samples"), images,
                                    final=final)
            fake_fraction = float(checkerboard.aliasing_energy_fraction(images).mean())
            writer.write_scalars(step, {population.name(index, "checkerboard"):
                                        fake_fraction / max(reference["fraction"], 1e-12)})

    periodic = {"samples": (config.sample_every, write_samples)}
    summary: dict = {}
    if spec.members:
        summary["population"] = population.describe(spec)
    # Only when configured: a run without scores pays nothing for them.
    scorer = evaluation.scorer_for(config)
    if scorer is not None:
        # With a weight average the raw generator is scored too (published GAN scores are
        # mostly of the raw one); with ema_decay 0 the two are the same network.
        raw = make_sampler(config, scorer, use_ema=False) if config.ema_decay > 0 else None
        periodic["metrics"] = (scorer.metrics.every,
                               evaluation.ScoreAction(scorer, make_sampler(config, scorer),
                                                      summary, spec=spec, raw_sampler=raw))
    elif spec.members:
        log.info("no scores are configured, so no best member will be chosen; name a judge "
                 "with --config.metrics.judge_workdir (or set metrics.inception)")

    def prepare_all(sources):
        prepare(sources["train"])
        if scorer is not None:
            scorer.load_reference_source()
        population.record_memory(config, create_state, train_step, summary)

    return loop.Task(
        create_state=functools.partial(create_state, config),
        stages=loop.single_stage(config, population.wrap_step(train_step, config)),
        periodic=periodic,
        prepare=prepare_all,
        progress_metrics=population.names(config, ("d_loss", "g_loss", "d_real", "d_fake"),
                                          first_only=True),
        plot_metrics=population.names(config, ("d_loss", "g_loss")),
        summary=summary,
        resumable=population.resumable(RESUMABLE, config),
        choices=CONFIG_CHOICES,
    )


def make_sampler(config: ml_collections.ConfigDict, scorer: evaluation.SampleScorer, *,
                 use_ema: bool = True):
    """(state, num) -> batches of the EMA (or raw) generator's samples, for the scorer."""
    def sampler(state: GANState, num: int) -> Iterator[np.ndarray]:
        return generate_batches(state, config, num, batch_size=scorer.metrics.batch_size,
                                use_ema=use_ema)

    return sampler


def evaluate_checkpoint(config: ml_collections.ConfigDict, state, workdir: str, *,
                        num: int | None = None, judge_workdir: str | None = None,
                        inception: bool | None = None, member: int | None = None,
                        use_ema: bool = True) -> dict:
    """`train.py eval`: scores a restored state's EMA generator (with `use_ema` False its raw
    one; gans_jax.evaluation); a population's members one after the other, choosing the best.
    `member` labels the scores of one member's state (``train.py eval --member i``)."""
    metrics = evaluation.settings(config)

    def sampler_of(generator_state: GANState):
        def sampler(num_images: int) -> Iterator[np.ndarray]:
            return generate_batches(generator_state, config, num_images,
                                    batch_size=metrics.batch_size, use_ema=use_ema)

        return sampler

    options = {"num": num, "judge_workdir": judge_workdir, "inception": inception,
               "use_ema": use_ema}
    if isinstance(state, population.PopulationState):
        samplers = [sampler_of(m) for _, m in population.each(state)]
        return evaluation.evaluate_population(
            config, int(state.members.step[0]), workdir, samplers,
            population.parse(config, POPULATION_KEYS), **options)
    return evaluation.evaluate_checkpoint(config, int(state.step), workdir, sampler_of(state),
                                          member=member, **options)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) a DCGAN in workdir; returns the run summary."""
    return loop.train(config, workdir, make_task(config))
