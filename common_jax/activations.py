"""Activation functions chosen by name, for any model (GAN generators/critics, CNN classifiers).

`activation_fn(name, **kwargs)` returns a parameter-free function; `Activation(kind)` is a Flax
module that also covers "prelu", whose negative slope is learned. Names are in `ACTIVATIONS`;
"sigmoid" and "swish" are accepted as aliases of "logistic" and "silu".

Conventions worth knowing:
- "binary_step" is trainable through a straight-through estimator (see `binary_step`).
- "gelu" is the exact form x * Phi(x) (erf), as PyTorch's default, not the tanh approximation.
- "softmax" normalises over the last axis (the channels of an NHWC map, the classes of logits).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from common_jax.errors import UserError

ACTIVATIONS: tuple[str, ...] = (
    "binary_step", "logistic", "tanh", "arctan", "relu", "prelu", "elu", "softplus",
    "leaky_relu", "softmax", "gelu", "silu", "identity",
)
ALIASES: dict[str, str] = {"sigmoid": "logistic", "swish": "silu"}
PRELU_INIT = 0.25  # He et al. 2015's initial slope


@jax.custom_vjp
def binary_step(x: jax.Array) -> jax.Array:
    """1 where x >= 0, else 0; backward: the saturating straight-through estimator.

    The true derivative is zero almost everywhere, so nothing upstream could learn. Following
    Bengio et al. 2013 and Courbariaux et al. 2016 the backward pass treats the step as the
    identity on |x| <= 1 (the derivative of hardtanh) and blocks the gradient outside, where the
    unit is saturated. custom_vjp (rather than the stop_gradient trick) keeps the forward value
    exactly binary and states the backward rule in one place.
    """
    return (x >= 0).astype(x.dtype)


def _binary_step_fwd(x):
    return (x >= 0).astype(x.dtype), x


def _binary_step_bwd(x, g):
    return (jnp.where(jnp.abs(x) <= 1, g, jnp.zeros_like(g)),)


binary_step.defvjp(_binary_step_fwd, _binary_step_bwd)


def _identity(x: jax.Array) -> jax.Array:
    return x


def _leaky_relu(slope: float = 0.2):  # 0.2: the DCGAN paper's slope
    return functools.partial(jax.nn.leaky_relu, negative_slope=slope)


def _elu(alpha: float = 1.0):
    return functools.partial(jax.nn.elu, alpha=alpha)


_SQRT_HALF = 1.0 / math.sqrt(2.0)


def gelu(x: jax.Array) -> jax.Array:
    """The exact GELU, x * Phi(x), as 0.5 x (1 + erf(x / sqrt 2)): PyTorch's formula.

    ``jax.nn.gelu(approximate=False)`` computes Phi through erfc, which XLA's CPU back end
    expands into a select between two approximations, one of them with an exponential, and
    splits over several passes over the activations; erf is one polynomial, fused into one
    pass (forward 2.5x as fast on a CIFAR-sized activation, docs/benchmarks.md). The two agree
    to about one float32 ulp of the result (at most 9.5e-7 for x in [-12, 12]).
    """
    return 0.5 * x * (1.0 + lax.erf(x * _SQRT_HALF))


# name -> factory; the factory's keyword arguments are the activation's options.
_FACTORIES: dict[str, Callable[..., Callable[[jax.Array], jax.Array]]] = {
    "binary_step": lambda: binary_step,
    "logistic": lambda: jax.nn.sigmoid,  # computed stably for large |x|
    "tanh": lambda: jnp.tanh,
    "arctan": lambda: jnp.arctan,
    "relu": lambda: jax.nn.relu,
    "elu": _elu,
    "softplus": lambda: jax.nn.softplus,  # log(1 + e^x) without overflow
    "leaky_relu": _leaky_relu,
    "softmax": lambda: functools.partial(jax.nn.softmax, axis=-1),
    "gelu": lambda: gelu,
    "silu": lambda: jax.nn.silu,
    "identity": lambda: _identity,
}


def canonical_name(name: str) -> str:
    """The canonical activation name for `name` (resolving aliases), or a UserError."""
    name = ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        choices = ", ".join(ACTIVATIONS + tuple(ALIASES))
        raise UserError(f"unknown activation '{name}'; choose one of {choices}")
    return name


def activation_fn(name: str, **kwargs) -> Callable[[jax.Array], jax.Array]:
    """The parameter-free activation `name`; kwargs: `slope` (leaky_relu), `alpha` (elu)."""
    name = canonical_name(name)
    if name == "prelu":
        raise UserError("activation 'prelu' has a learned slope; use the "
                        "common_jax.activations.Activation module (or PReLU) instead")
    factory = _FACTORIES[name]
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no options"
        raise UserError(f"activation '{name}' does not take {', '.join(unknown)}; it takes "
                        f"{takes}")
    return factory(**kwargs)


def _prelu(module: nn.Module, x: jax.Array, per_channel: bool, init: float) -> jax.Array:
    """max(x, 0) + a * min(x, 0) with `a` a parameter of `module` named "slope"."""
    shape = (x.shape[-1],) if per_channel else ()
    slope = module.param("slope", nn.initializers.constant(init), shape, jnp.float32)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class PReLU(nn.Module):
    """Parametric ReLU (He et al. 2015): the negative slope is learned, one per channel
    (the last axis) or a single scalar with ``per_channel=False``."""

    per_channel: bool = True
    slope_init: float = PRELU_INIT  # not `init`, which is Module.init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _prelu(self, x, self.per_channel, self.slope_init)


class Activation(nn.Module):
    """Any activation of `ACTIVATIONS` (or an alias) as a module.

    `slope` is leaky_relu's negative slope and `alpha` elu's; "prelu" creates its learned
    "slope" parameter in this module (initialised to `prelu_init`, per channel unless
    `per_channel` is False). The field is `kind` because `name` is Flax's module name.
    """

    kind: str
    slope: float = 0.2
    alpha: float = 1.0
    per_channel: bool = True
    prelu_init: float = PRELU_INIT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kind = canonical_name(self.kind)
        if kind == "prelu":
            return _prelu(self, x, self.per_channel, self.prelu_init)
        options = {"leaky_relu": {"slope": self.slope}, "elu": {"alpha": self.alpha}}
        return activation_fn(kind, **options.get(kind, {}))(x)
