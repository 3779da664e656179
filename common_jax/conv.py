"""A drop-in ``lax.conv_general_dilated`` that computes on oneDNN on the CPU.

`conv_general_dilated` takes ``lax.conv_general_dilated``'s arguments and returns the same
values. On the CPU backend, with the extension built (`make onednn`, see `common_jax.onednn`),
the convolutions our models use run as oneDNN custom calls: NHWC activations with HWIO
kernels (flax's layouts), float32 or bfloat16, any strides, non-negative padding and kernel
dilation, ``feature_group_count`` 1. Transposed convolutions (``lhs_dilation`` > 1 with unit
strides, as ``lax.conv_transpose`` makes them, or `conv_transpose` here) run as the input
gradient of the mirror strided convolution. Anything else, every other backend, and a CPU
without the extension (one log line says why) gets XLA's own convolution.

Derivatives: the forward pass, the input gradient and the kernel gradient are three custom
calls, each a ``jax.custom_vjp`` whose VJP is made of the other two (all three are bilinear),
so gradients of any order work (gradient penalties differentiate a gradient). Forward-mode
(``jax.jvp``) is not defined for them.

Wiring: `Conv` is flax's ``nn.Conv`` with ``conv_general_dilated`` set to this one (a drop-in for
``nn.Conv`` in a model); code that calls ``lax.conv_general_dilated`` or ``lax.conv_transpose``
calls the function of the same name here. ``COMMON_JAX_ONEDNN=0`` switches it
off at trace time (functions already compiled keep what they were compiled with).
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from common_jax import onednn

log = logging.getLogger(__name__)

DIMS = ("NHWC", "HWIO", "NHWC")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class Window(NamedTuple):
    """The static part of one convolution, in oneDNN's terms (explicit, non-negative pads)."""

    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]

    def kwargs(self) -> dict:
        return {"strides": self.strides, "padding": self.padding, "dilation": self.dilation}


# ---------------------------------------------------------------------------------------------
# The three parts, each differentiable through the other two


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _forward(x, w, window: Window):
    return onednn.forward(x, w, **window.kwargs())


def _forward_fwd(x, w, window):
    return _forward(x, w, window), (x, w)


def _forward_bwd(window, residuals, dy):
    x, w = residuals
    return (_backward_data(dy, w, window, x.shape), _backward_weights(x, dy, window, w.shape))


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_data(dy, w, window: Window, x_shape: tuple[int, ...]):
    return onednn.backward_data(dy, w, x_shape, **window.kwargs())


def _backward_data_fwd(dy, w, window, x_shape):
    return _backward_data(dy, w, window, x_shape), (dy, w)


def _backward_data_bwd(window, x_shape, residuals, g):
    # <g, D(dy, w)> = <F(g, w), dy>: linear in dy through F, in w through the kernel gradient.
    dy, w = residuals
    return _forward(g, w, window), _backward_weights(g, dy, window, w.shape)


_backward_data.defvjp(_backward_data_fwd, _backward_data_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _backward_weights(x, dy, window: Window, w_shape: tuple[int, ...]):
    return onednn.backward_weights(x, dy, w_shape, **window.kwargs())


def _backward_weights_fwd(x, dy, window, w_shape):
    return _backward_weights(x, dy, window, w_shape), (x, dy)


def _backward_weights_bwd(window, w_shape, residuals, h):
    # <h, W(x, dy)> = <F(x, h), dy>.
    x, dy = residuals
    return _backward_data(dy, h, window, x.shape), _forward(x, h, window)


_backward_weights.defvjp(_backward_weights_fwd, _backward_weights_bwd)


# ---------------------------------------------------------------------------------------------
# The drop-in


@functools.cache
def _say_unavailable(reason: str) -> None:
    log.info("convolutions on XLA's CPU kernels: the oneDNN extension is %s", reason)


def onednn_active() -> bool:
    """True when a convolution traced now on the default backend would use oneDNN."""
    if jax.default_backend() != "cpu":
        return False
    if onednn.load():
        return True
    _say_unavailable(onednn.status())
    return False


def _window(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, preferred_element_type,
            out_sharding) -> tuple[Window, tuple[int, int]] | None:
    """(window, lhs dilation) when oneDNN can compute this convolution, else None."""
    if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
        return None
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != \
            lax.conv_dimension_numbers(lhs.shape, rhs.shape, DIMS):
        return None
    dtype = jnp.dtype(lhs.dtype)
    if dtype not in _DTYPES or jnp.dtype(rhs.dtype) != dtype:
        return None
    if preferred_element_type is not None and jnp.dtype(preferred_element_type) != dtype:
        return None
    if feature_group_count != 1 or batch_group_count != 1 or out_sharding is not None:
        return None
    lhs_dilation = tuple(lhs_dilation or (1, 1))
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str) and lhs_dilation != (1, 1):
        return None  # lax refuses it, with its own message
    if isinstance(padding, str):  # as lax resolves it
        kernel = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation, strict=True)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], kernel, window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(padding) != 2 or min(min(pad) for pad in padding) < 0:
        return None
    window = Window(tuple(int(s) for s in window_strides), padding,
                    tuple(int(d) for d in rhs_dilation))
    return window, tuple(int(d) for d in lhs_dilation)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         out_sharding=None):
    """``lax.conv_general_dilated``, on oneDNN where it can (see the module docstring).

    `precision` is XLA's alone: oneDNN computes float32 in float32 and bfloat16 with float32
    accumulation, what XLA's CPU back end does at every precision.
    """
    def xla():
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
            out_sharding=out_sharding)

    found = _window(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count,
                    preferred_element_type, out_sharding)
    if found is None or not onednn_active():
        return xla()
    window, lhs_dilation = found
    if lhs_dilation == (1, 1):
        return _forward(lhs, rhs, window)
    mirror = _mirror(lhs, rhs, window, lhs_dilation)
    if mirror is None:
        return xla()
    mirror_window, kernel, out_shape = mirror
    return _backward_data(lhs, kernel, mirror_window, out_shape)


def _mirror(x, w, window: Window, lhs_dilation: tuple[int, int]):
    """A transposed convolution (input dilated by s, unit strides, pads (lo, hi)) as the input
    gradient of the strided convolution it mirrors: stride s, kernel flipped with its in and
    out channels swapped, pads d(k-1) - lo and d(k-1) - hi. None when these would be negative
    or the strides are not 1."""
    if window.strides != (1, 1):
        return None
    pads, sizes = [], []
    for i in range(2):
        reach = (w.shape[i] - 1) * window.dilation[i]  # d(k - 1)
        lo, hi = window.padding[i]
        size = (x.shape[1 + i] - 1) * lhs_dilation[i] + 1 + lo + hi - reach
        if lo > reach or hi > reach or size <= 0:
            return None
        pads.append((reach - lo, reach - hi))
        sizes.append(size)
    kernel = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
    mirror = Window(lhs_dilation, tuple(pads), window.dilation)
    return mirror, kernel, (x.shape[0], *sizes, w.shape[3])


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None, dimension_numbers=None,
                   transpose_kernel=False, precision=None, preferred_element_type=None):
    """``lax.conv_transpose`` with explicit padding, through `conv_general_dilated` (string
    padding goes to ``lax.conv_transpose`` itself)."""
    if isinstance(padding, str) or dimension_numbers is None:
        return lax.conv_transpose(lhs, rhs, strides, padding, rhs_dilation, dimension_numbers,
                                  transpose_kernel, precision, preferred_element_type)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if transpose_kernel:  # as lax: flip the spatial axes, swap the kernel's in and out axes
        rhs = jnp.flip(rhs, dn.rhs_spec[2:])
        rhs = jnp.swapaxes(rhs, dn.rhs_spec[0], dn.rhs_spec[1])
    ones = (1,) * (lhs.ndim - 2)
    return conv_general_dilated(lhs, rhs, ones, padding, strides, rhs_dilation, dimension_numbers,
                                precision=precision,
                                preferred_element_type=preferred_element_type)


# flax's convolution layer computing through `conv_general_dilated`: ``Conv(features, (3, 3))``.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
