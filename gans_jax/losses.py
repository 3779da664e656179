"""GAN losses on discriminator logits, and the usual regularising penalties.

The discriminator (critic) returns raw scores ("logits") of shape [B], one per image. Every loss
is a pure function of those scores with keyword-only arguments that returns a float32 scalar:
a mean over the batch. Inputs of any float dtype are cast to float32 first, so bfloat16
discriminators still get float32 losses and gradients.

Losses (discriminator / generator), minimised by their respective player:
- "minimax": Goodfellow et al. 2014, the original saturating game.
  D: BCE(real, 1) + BCE(fake, 0);  G: mean(log(1 - sigmoid(fake))).
- "non_saturating": same D; G: BCE(fake, 1), i.e. G maximises log D(G(z)).
- "lsgan": Mao et al. 2017 with targets a=0 (fake), b=1 (real), c=1 (G's target).
  D: 0.5 * mean((real - 1)^2) + 0.5 * mean(fake^2);  G: 0.5 * mean((fake - 1)^2).
- "wasserstein": Arjovsky et al. 2017 (pair it with a Lipschitz constraint such as
  `gradient_penalty`).  D: mean(fake) - mean(real);  G: -mean(fake).
- "hinge": Lim & Ye 2017 / Miyato et al. 2018.
  D: mean(relu(1 - real)) + mean(relu(1 + fake));  G: -mean(fake).

One-sided label smoothing (Salimans et al. 2016) is the `real_label` argument of the minimax,
non-saturating and LSGAN discriminator losses: only the real target moves (e.g. to 0.9).

Penalties, returned unweighted (the caller owns the weight):
- `gradient_penalty`: WGAN-GP, Gulrajani et al. 2017.
- `r1_penalty`: Mescheder et al. 2018.
- `drift_penalty`: ProGAN's epsilon-drift term, Karras et al. 2018.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LOSSES = ("minimax", "non_saturating", "lsgan", "wasserstein", "hinge")

# Added inside the sqrt of gradient norms: d sqrt(s)/ds is infinite at s = 0, which would turn
# the penalty's gradient into NaN for a critic that is flat at some interpolate.
_NORM_EPS = 1e-12


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _check_same_shape(real: jax.Array, fake: jax.Array, what: str) -> None:
    # Real and fake batches are scored by the same D in the same step; different shapes
    # (e.g. [B, 1] against [B]) mean a bug upstream that a mean would silently hide.
    if jnp.shape(real) != jnp.shape(fake):
        raise ValueError(f"real {what} have shape {jnp.shape(real)} but fake {what} have shape "
                         f"{jnp.shape(fake)}; they must match")


def _check_real_label(real_label: float) -> None:
    # A target above 1 makes BCE unbounded below in the real logits; 0 or less is not smoothing.
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"real_label must be in (0, 1], got {real_label}")


def _bce(logits: jax.Array, target: float) -> jax.Array:
    """Mean binary cross-entropy of logits against a constant target, in a stable form."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


# --- minimax / non-saturating ---------------------------------------------------------------


def minimax_discriminator_loss(*, real_logits: jax.Array, fake_logits: jax.Array,
                               real_label: float = 1.0) -> jax.Array:
    """BCE(real, real_label) + BCE(fake, 0): D's loss of both the minimax and non-saturating games.

    real_logits [B], fake_logits [B] -> float32 scalar. `real_label` < 1 is one-sided label
    smoothing; the fake target stays 0.
    """
    _check_same_shape(real_logits, fake_logits, "logits")
    _check_real_label(real_label)
    return _bce(_f32(real_logits), real_label) + _bce(_f32(fake_logits), 0.0)


# D's side is identical in both games; only G's objective differs.
non_saturating_discriminator_loss = minimax_discriminator_loss


def minimax_generator_loss(*, fake_logits: jax.Array) -> jax.Array:
    """mean(log(1 - sigmoid(fake))) = -BCE(fake, 0), minimised by G (the saturating loss).

    fake_logits [B] -> float32 scalar. Its gradient vanishes when D confidently rejects the
    fakes, which is why the non-saturating loss is usually preferred.
    """
    # log(1 - sigmoid(x)) = -softplus(x), finite for any x.
    return -jnp.mean(jax.nn.softplus(_f32(fake_logits)))


def non_saturating_generator_loss(*, fake_logits: jax.Array) -> jax.Array:
    """BCE(fake, 1) = -mean(log sigmoid(fake)): G maximises log D(G(z)).

    fake_logits [B] -> float32 scalar.
    """
    return _bce(_f32(fake_logits), 1.0)


# --- least squares --------------------------------------------------------------------------


def lsgan_discriminator_loss(*, real_logits: jax.Array, fake_logits: jax.Array,
                             real_label: float = 1.0) -> jax.Array:
    """0.5 * mean((real - real_label)^2) + 0.5 * mean(fake^2).

    real_logits [B], fake_logits [B] -> float32 scalar. `real_label` is the real target b
    (1 unless smoothed); the fake target a is 0.
    """
    _check_same_shape(real_logits, fake_logits, "logits")
    _check_real_label(real_label)
    real, fake = _f32(real_logits), _f32(fake_logits)
    return 0.5 * jnp.mean(jnp.square(real - real_label)) + 0.5 * jnp.mean(jnp.square(fake))


def lsgan_generator_loss(*, fake_logits: jax.Array) -> jax.Array:
    """0.5 * mean((fake - 1)^2). fake_logits [B] -> float32 scalar."""
    return 0.5 * jnp.mean(jnp.square(_f32(fake_logits) - 1.0))


# --- Wasserstein ----------------------------------------------------------------------------


def wasserstein_discriminator_loss(*, real_logits: jax.Array,
                                   fake_logits: jax.Array) -> jax.Array:
    """mean(fake) - mean(real): the critic's negated Wasserstein-1 estimate.

    real_logits [B], fake_logits [B] -> float32 scalar. Only meaningful with a Lipschitz
    constraint on the critic (gradient penalty, weight clipping, spectral norm).
    """
    _check_same_shape(real_logits, fake_logits, "logits")
    return jnp.mean(_f32(fake_logits)) - jnp.mean(_f32(real_logits))


def wasserstein_generator_loss(*, fake_logits: jax.Array) -> jax.Array:
    """-mean(fake). fake_logits [B] -> float32 scalar."""
    return -jnp.mean(_f32(fake_logits))


# --- hinge ----------------------------------------------------------------------------------


def hinge_discriminator_loss(*, real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """mean(relu(1 - real)) + mean(relu(1 + fake)).

    real_logits [B], fake_logits [B] -> float32 scalar.
    """
    _check_same_shape(real_logits, fake_logits, "logits")
    return (jnp.mean(jax.nn.relu(1.0 - _f32(real_logits)))
            + jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits))))


def hinge_generator_loss(*, fake_logits: jax.Array) -> jax.Array:
    """-mean(fake), as for the Wasserstein loss. fake_logits [B] -> float32 scalar."""
    return -jnp.mean(_f32(fake_logits))


# --- dispatch -------------------------------------------------------------------------------

_D_LOSSES = {
    "minimax": minimax_discriminator_loss,
    "non_saturating": non_saturating_discriminator_loss,
    "lsgan": lsgan_discriminator_loss,
    "wasserstein": wasserstein_discriminator_loss,
    "hinge": hinge_discriminator_loss,
}
_G_LOSSES = {
    "minimax": minimax_generator_loss,
    "non_saturating": non_saturating_generator_loss,
    "lsgan": lsgan_generator_loss,
    "wasserstein": wasserstein_generator_loss,
    "hinge": hinge_generator_loss,
}
# Losses whose real term has a target that smoothing can move.
_SMOOTHABLE = ("minimax", "non_saturating", "lsgan")


def _check_kind(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"unknown GAN loss '{kind}'; use one of {', '.join(LOSSES)}")


def discriminator_loss(kind: str, *, real_logits: jax.Array, fake_logits: jax.Array,
                       real_label: float = 1.0) -> jax.Array:
    """D's loss of the given kind (one of `LOSSES`).

    real_logits [B], fake_logits [B] -> float32 scalar. `real_label` != 1 (one-sided label
    smoothing) is a ValueError for "wasserstein" and "hinge", which have no target to smooth.
    """
    _check_kind(kind)
    if kind in _SMOOTHABLE:
        return _D_LOSSES[kind](real_logits=real_logits, fake_logits=fake_logits,
                               real_label=real_label)
    if real_label != 1.0:
        raise ValueError(f"real_label={real_label}: label smoothing is meaningless for the "
                         f"'{kind}' loss; use it only with {', '.join(_SMOOTHABLE)}")
    return _D_LOSSES[kind](real_logits=real_logits, fake_logits=fake_logits)


def generator_loss(kind: str, *, fake_logits: jax.Array) -> jax.Array:
    """G's loss of the given kind (one of `LOSSES`). fake_logits [B] -> float32 scalar."""
    _check_kind(kind)
    return _G_LOSSES[kind](fake_logits=fake_logits)


# --- penalties ------------------------------------------------------------------------------

Critic = Callable[[jax.Array], jax.Array]  # images [B, ...] -> logits [B]


def interpolate(real: jax.Array, fake: jax.Array, key: jax.Array | None = None, *,
                weights: jax.Array | None = None) -> jax.Array:
    """eps * real + (1 - eps) * fake in float32, with eps ~ U[0, 1] drawn once per example.

    real, fake [B, ...] (e.g. [B, H, W, C]) -> [B, ...] float32. eps has shape [B, 1, ..., 1],
    drawn with `jax.random.uniform(key, ...)`, so the same key gives the same points; or pass
    the `weights` eps themselves (a data-parallel step draws them for the global batch and
    keeps its slice, so any device count gives the same points).
    """
    _check_same_shape(real, fake, "images")
    real, fake = _f32(real), _f32(fake)
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    if weights is None:
        if key is None:
            raise ValueError("interpolate needs a key or the weights")
        eps = jax.random.uniform(key, shape, jnp.float32)
    else:
        eps = jnp.reshape(_f32(weights), shape)
    return eps * real + (1.0 - eps) * fake


def _input_gradients(critic: Critic, images: jax.Array) -> jax.Array:
    """d critic(x)_i / d x_i for every example i, as float32 [B, ...]."""
    # The sum's gradient is per-example only if the critic treats examples independently
    # (no batch norm in training mode, as the WGAN-GP paper notes).
    grads = jax.grad(lambda x: jnp.sum(_f32(critic(x))))(images)
    return _f32(grads)


def gradient_penalty(critic: Critic, *, real: jax.Array, fake: jax.Array,
                     key: jax.Array | None = None, weights: jax.Array | None = None,
                     target: float = 1.0) -> jax.Array:
    """WGAN-GP: mean over examples of (||grad_x critic(x_hat)||_2 - target)^2.

    critic: images [B, ...] -> logits [B]; real, fake [B, ...] of equal shape; key: a PRNG key
    for the interpolation weights, or the weights [B] themselves (see `interpolate`). Returns
    a float32 scalar, whatever the dtypes of the images and the critic; the caller multiplies
    it by lambda (10 in the paper).
    Differentiable w.r.t. the critic's parameters (closed over by `critic`).
    """
    x_hat = interpolate(real, fake, key, weights=weights)
    grads = _input_gradients(critic, x_hat)
    sq_norms = jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))
    norms = jnp.sqrt(sq_norms + _NORM_EPS)
    return jnp.mean(jnp.square(norms - target))


def r1_penalty(critic: Critic, *, real: jax.Array) -> jax.Array:
    """R1: mean over examples of ||grad_x critic(x)||_2^2 at the real data.

    critic: images [B, ...] -> logits [B]; real [B, ...]. Returns a float32 scalar, unweighted:
    the caller multiplies it by gamma / 2 (Mescheder et al. 2018).
    """
    grads = _input_gradients(critic, _f32(real))
    return jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


def drift_penalty(*, real_logits: jax.Array) -> jax.Array:
    """ProGAN's drift term mean(real_logits^2), which keeps the critic's scores near 0.

    real_logits [B] -> float32 scalar; the caller multiplies it by eps_drift (0.001).
    """
    return jnp.mean(jnp.square(_f32(real_logits)))
