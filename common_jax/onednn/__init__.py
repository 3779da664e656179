"""oneDNN's CPU convolutions as XLA custom calls: an optional extension.

XLA's CPU back end computes convolutions, above all their kernel gradients, several times
slower than oneDNN (what PyTorch runs on CPUs); see docs/benchmarks.md, "Convolutions through
oneDNN". This package holds a small C++ library (onednn_conv.cc, built by `make onednn` or
``python -m common_jax.onednn.build``) with three XLA FFI handlers, and their Python side:

- `load()` loads the library once and registers its handlers for the CPU platform; False (and
  `status()` says why) when it is not built, does not load, or is switched off with
  ``COMMON_JAX_ONEDNN=0``.
- `forward`, `backward_data`, `backward_weights`: one ``jax.ffi.ffi_call`` each, on NHWC
  activations and HWIO kernels (float32 or bfloat16), with explicit non-negative padding. They
  have no derivatives of their own: `common_jax.conv` wires them into a differentiable,
  drop-in ``conv_general_dilated``.

Under ``jax.vmap`` the handlers get the vmapped dimensions in front ("expand_dims") and fold
them into the batch when the kernel is shared, else loop over them.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from common_jax.config_utils import env_switch
from common_jax.errors import UserError

SOURCE = Path(__file__).with_name("onednn_conv.cc")
LIBRARY_ENV = "COMMON_JAX_ONEDNN_LIB"  # a library built elsewhere
SWITCH_ENV = "COMMON_JAX_ONEDNN"  # "0" / "off": never use the extension; "1" / unset: use it
THREADS_ENV = "COMMON_JAX_ONEDNN_THREADS"  # oneDNN threads per call; default: cores / devices
_TARGETS = {"forward": "OnednnConvForward", "backward_data": "OnednnConvBackwardData",
            "backward_weights": "OnednnConvBackwardWeights"}

_status = "not loaded yet"


def library_path() -> Path:
    """Where `build` puts the library: build/onednn/ in the source tree (git-ignored)."""
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV])
    return Path(__file__).resolve().parents[2] / "build" / "onednn" / "libonednn_conv.so"


def switched_off() -> bool:
    return env_switch(os.environ, SWITCH_ENV, default="on",
                      fix="set it to 0 (XLA's convolutions) or 1 (oneDNN's, the default), or "
                          "unset it") == "off"


def _open(path: Path) -> tuple[ctypes.CDLL | None, str]:
    """The library at `path` and a line about it, or None and why not."""
    if not path.exists():
        if os.environ.get(LIBRARY_ENV):
            return None, (f"not found ({LIBRARY_ENV}={path} names no file; point it at a library "
                          "built by `python -m common_jax.onednn.build --output <file>`, or "
                          "unset it)")
        return None, f"not built ({path} is missing; `make onednn` builds it)"
    # oneDNN's OpenMP threads sleep between calls rather than spin: XLA's own threads need the
    # cores then. libgomp reads this once, when it loads (only if nothing loaded it before), so
    # the variable is set only while the library loads: left set, it would also make a PyTorch
    # imported later in this process (its own libgomp) and every child process sleep-wait,
    # which slowed a small PyTorch step by 1.2-1.3x here (docs/benchmarks.md).
    unset = "OMP_WAIT_POLICY" not in os.environ
    if unset:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:  # e.g. libdnnl.so removed since the build
        return None, f"not loadable ({path}: {error})"
    finally:
        if unset:
            del os.environ["OMP_WAIT_POLICY"]
    library.OnednnVersion.restype = ctypes.c_char_p
    return library, f"oneDNN {library.OnednnVersion().decode()} from {path}"


@functools.cache
def _load() -> bool:
    global _status
    library, _status = _open(library_path())
    if library is None:
        return False
    for target in _TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)),
                                    platform="cpu")
    return True


def load() -> bool:
    """True when the custom calls are registered and may be used (loads them the first time)."""
    return not switched_off() and _load()


def status() -> str:
    """One line: the loaded library and its oneDNN version, or why there is none."""
    if switched_off():
        return f"switched off ({SWITCH_ENV}={os.environ[SWITCH_ENV]})"
    _load()
    return _status


def threads() -> int:
    """oneDNN's threads per call: the cores this process may use, shared out among the CPU
    devices, which run their programs at the same time (one device per core in train.py)."""
    if os.environ.get(THREADS_ENV):
        try:
            return max(1, int(os.environ[THREADS_ENV]))
        except ValueError:
            raise UserError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r}: set it to a whole number "
                            "of threads, or unset it (cores / devices)") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, jax.local_device_count("cpu")))


def _call(part: str, a: jax.Array, b: jax.Array, shape: Sequence[int], *,
          strides: Sequence[int], padding: Sequence[tuple[int, int]],
          dilation: Sequence[int]) -> jax.Array:
    if not load():
        raise RuntimeError(f"the oneDNN convolutions are unavailable: {status()}")
    attrs = {"strides": np.asarray(strides, np.int64),
             "padding_lo": np.asarray([lo for lo, _ in padding], np.int64),
             "padding_hi": np.asarray([hi for _, hi in padding], np.int64),
             "dilation": np.asarray(dilation, np.int64), "threads": np.int64(threads())}
    result = jax.ShapeDtypeStruct(tuple(shape), a.dtype)
    return jax.ffi.ffi_call(_TARGETS[part], result, vmap_method="expand_dims")(a, b, **attrs)


def forward(x, w, *, strides, padding, dilation):
    """conv(x [N, H, W, Ci], w [kh, kw, Ci, Co]) -> [N, Ho, Wo, Co]."""
    height, width = (_out_size(x.shape[1 + i], w.shape[i], strides[i], padding[i], dilation[i])
                     for i in range(2))
    return _call("forward", x, w, (x.shape[0], height, width, w.shape[3]), strides=strides,
                 padding=padding, dilation=dilation)


def backward_data(dy, w, x_shape, *, strides, padding, dilation):
    """The gradient with respect to x ([N, H, W, Ci] = x_shape) of `forward`, given dy."""
    return _call("backward_data", dy, w, x_shape, strides=strides, padding=padding,
                 dilation=dilation)


def backward_weights(x, dy, w_shape, *, strides, padding, dilation):
    """The gradient with respect to w ([kh, kw, Ci, Co] = w_shape) of `forward`, given dy."""
    return _call("backward_weights", x, dy, w_shape, strides=strides, padding=padding,
                 dilation=dilation)


def _out_size(size: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int) -> int:
    return (size + pad[0] + pad[1] - (kernel - 1) * dilation - 1) // stride + 1
