"""The oneDNN convolutions (`common_jax.onednn`, `common_jax.conv`) against XLA's own.

For the convolution shapes of our models (batch cut to 2), `conv.conv_general_dilated` must give
``lax.conv_general_dilated``'s values and first and second derivatives, in float32 and
bfloat16, under jit, vmap, shard_map over the 8 forced CPU devices and pmap, and in a flax
model wired through ``nn.Conv(conv_general_dilated=...)``; and the compiled programs must
really call oneDNN. These skip, saying why, when the extension is not built (`make onednn`).
The fallback to XLA and the build script's refusals run everywhere.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from common_jax import conv, onednn
from common_jax.errors import UserError
from common_jax.onednn import build

DIMS = ("NHWC", "HWIO", "NHWC")
ROOT = Path(__file__).resolve().parents[1]
needs_onednn = pytest.mark.skipif(not onednn.load(), reason=f"oneDNN extension: {onednn.status()}")


class Case:
    """One convolution: x [N, H, W, Ci], kernel [kh, kw, Ci, Co] and lax's window arguments."""

    def __init__(self, name, x, kernel, strides=(1, 1), padding="SAME", lhs_dilation=None,
                 rhs_dilation=None):
        self.name, self.x, self.kernel = name, x, kernel
        self.kwargs = {"window_strides": strides, "padding": padding,
                       "lhs_dilation": lhs_dilation, "rhs_dilation": rhs_dilation,
                       "dimension_numbers": DIMS}

    def __repr__(self):
        return self.name


P1 = ((1, 1), (1, 1))
# Transposed convolutions as lax.conv_transpose makes them (input dilated by the stride):
# k4 s2 PyTorch padding 1 -> pads (2, 2); k3 s2 padding 1 output_padding 1 -> pads (1, 2).
T4 = {"padding": ((2, 2), (2, 2)), "lhs_dilation": (2, 2)}
T3 = {"padding": ((1, 2), (1, 2)), "lhs_dilation": (2, 2)}

# The convolution shapes of our models' train steps, listed from the traced steps of the
# registered configs (benchmarks/common.py), batch cut to 2. On CPU the GANs compute their
# transposed convolutions in the sub-pixel form (stride-1 2x2 convolutions); their direct form
# (an input-dilated convolution, what `conv.conv_transpose` computes) is here as well.
CASES = [
    # DCGAN 64x64 (dcgan_anime): D k4 s2 p1; G sub-pixel 2x2, and the direct k4 s2 form
    Case("dcgan64 D 64->32", (2, 64, 64, 3), (4, 4, 3, 64), (2, 2), P1),
    Case("dcgan64 D 32->16", (2, 32, 32, 64), (4, 4, 64, 128), (2, 2), P1),
    Case("dcgan64 D 8->4", (2, 8, 8, 256), (4, 4, 256, 512), (2, 2), P1),
    Case("dcgan64 G tconv 16->32", (2, 16, 16, 128), (4, 4, 128, 64), **T4),
    Case("dcgan64 G tconv 32->64 rgb", (2, 32, 32, 64), (4, 4, 64, 3), **T4),
    Case("dcgan64 G sub-pixel 4->8", (2, 6, 6, 512), (2, 2, 512, 1024), padding="VALID"),
    Case("dcgan64 G sub-pixel 16->32", (2, 18, 18, 128), (2, 2, 128, 256), padding="VALID"),
    Case("dcgan64 G sub-pixel 32->64 rgb", (2, 34, 34, 64), (2, 2, 64, 12), padding="VALID"),
    # DCGAN MNIST (28x28, 1 channel)
    Case("dcgan mnist D 28->14", (2, 28, 28, 1), (4, 4, 1, 64), (2, 2), P1),
    Case("dcgan mnist D 14->7", (2, 14, 14, 64), (4, 4, 64, 128), (2, 2), P1),
    Case("dcgan mnist G sub-pixel 7->14", (2, 9, 9, 128), (2, 2, 128, 256), padding="VALID"),
    Case("dcgan mnist G sub-pixel 14->28", (2, 16, 16, 64), (2, 2, 64, 4), padding="VALID"),
    Case("dcgan mnist G tconv 14->28", (2, 14, 14, 64), (4, 4, 64, 1), **T4),
    # classifiers: 3x3 SAME (cls_mnist, cls_cifar10, cls_cifar10_fast)
    Case("cls mnist 28 1->32", (2, 28, 28, 1), (3, 3, 1, 32)),
    Case("cls mnist 28 32->32", (2, 28, 28, 32), (3, 3, 32, 32)),
    Case("cls mnist 14 64->64", (2, 14, 14, 64), (3, 3, 64, 64)),
    Case("cls mnist 7 128->128", (2, 7, 7, 128), (3, 3, 128, 128)),
    Case("cls cifar 32 3->64", (2, 32, 32, 3), (3, 3, 3, 64)),
    Case("cls cifar 8 256->256", (2, 8, 8, 256), (3, 3, 256, 256)),
    Case("cls cifar fast 4 256->256", (2, 4, 4, 256), (3, 3, 256, 256)),
    # ResNet50 (224x224): 7x7 s2 stem, 1x1 and 3x3 bottleneck convs, strided 1x1 projections
    Case("resnet50 stem 7x7 s2", (2, 224, 224, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3))),
    Case("resnet50 56 1x1 256->64", (2, 56, 56, 256), (1, 1, 256, 64), padding=((0, 0),) * 2),
    Case("resnet50 56 3x3 s2", (2, 56, 56, 128), (3, 3, 128, 128), (2, 2), P1),
    Case("resnet50 56 1x1 s2 projection", (2, 56, 56, 256), (1, 1, 256, 512), (2, 2),
         ((0, 0), (0, 0))),
    Case("resnet50 14 1x1 1024->256", (2, 14, 14, 1024), (1, 1, 1024, 256),
         padding=((0, 0),) * 2),
    Case("resnet50 7 3x3 512", (2, 7, 7, 512), (3, 3, 512, 512), padding=P1),
    Case("resnet50 7 1x1 2048->512", (2, 7, 7, 2048), (1, 1, 2048, 512), padding=((0, 0),) * 2),
    # CycleGAN: 7x7 VALID after reflection padding, 3x3 s2 down, 3x3 VALID residual, k3 s2 up
    # (sub-pixel 2x2 and direct), PatchGAN k4 s2 and s1
    Case("cyclegan 7x7 in", (2, 54, 54, 3), (7, 7, 3, 32), padding="VALID"),
    Case("cyclegan 7x7 out", (2, 54, 54, 32), (7, 7, 32, 3), padding="VALID"),
    Case("cyclegan 3x3 s2 down", (2, 48, 48, 32), (3, 3, 32, 64), (2, 2), P1),
    Case("cyclegan residual 3x3", (2, 14, 14, 128), (3, 3, 128, 128), padding="VALID"),
    Case("cyclegan sub-pixel k3 up", (2, 13, 13, 128), (2, 2, 128, 256), padding="VALID"),
    Case("cyclegan tconv k3 s2 up", (2, 12, 12, 128), (3, 3, 128, 64), **T3),
    Case("cyclegan patch k4 s2", (2, 24, 24, 64), (4, 4, 64, 128), (2, 2), P1),
    Case("cyclegan patch k4 s1", (2, 6, 6, 256), (4, 4, 256, 512), (1, 1), P1),
    Case("cyclegan patch k4 s1 out", (2, 5, 5, 512), (4, 4, 512, 1), (1, 1), P1),
    # ProGAN: equalized 3x3 SAME (129 channels: minibatch std), 1x1 from/to RGB
    Case("progan 3x3 mbstd", (2, 4, 4, 129), (3, 3, 129, 128)),
    Case("progan 3x3 32 64->128", (2, 32, 32, 64), (3, 3, 64, 128)),
    Case("progan from rgb 64", (2, 64, 64, 3), (1, 1, 3, 32)),
    Case("progan to rgb 64", (2, 64, 64, 32), (1, 1, 32, 3)),
    # autoencoder: 4x4 s2 p1 down, 3x3, 1x1 to/from latent, sub-pixel up
    Case("autoencoder 4x4 s2", (2, 32, 32, 32), (4, 4, 32, 32), (2, 2), P1),
    Case("autoencoder to pixels", (2, 32, 32, 32), (3, 3, 32, 3), padding=P1),
    Case("autoencoder to latent", (2, 4, 4, 128), (1, 1, 128, 16), padding=((0, 0),) * 2),
    Case("autoencoder sub-pixel up", (2, 6, 6, 128), (2, 2, 128, 512), padding="VALID"),
    # beyond our models: kernel dilation and an uneven shape with SAME's asymmetric padding
    Case("dilated 3x3", (2, 12, 12, 8), (3, 3, 8, 16), rhs_dilation=(2, 2)),
    Case("uneven s2 SAME", (2, 9, 7, 5), (3, 3, 5, 6), (2, 2)),
]


def pick(*names: str) -> list[Case]:
    by_name = {case.name: case for case in CASES}
    return [by_name[name] for name in names]


def inputs(case: Case, dtype=jnp.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x)
    w = rng.standard_normal(case.kernel) / np.sqrt(np.prod(case.kernel[:3]))
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


def both(case: Case):
    """(XLA's convolution, ours) as functions of (x, w)."""
    return (lambda x, w: lax.conv_general_dilated(x, w, **case.kwargs),
            lambda x, w: conv.conv_general_dilated(x, w, **case.kwargs))


def loss_of(fn):
    # A non-linear loss, so the gradients depend on every output value.
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w).astype(jnp.float32)))


def assert_close(actual, expected, rtol=1e-5):
    """Equal to float tolerance, relative to the largest magnitude."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def uses_onednn(fn, *args) -> bool:
    return "OnednnConv" in jax.jit(fn).lower(*args).as_text()


# ---------------------------------------------------------------------------------------------
# Values and gradients, shape by shape


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_values_and_gradients_equal_xla(case):
    x, w = inputs(case)
    xla, ours = both(case)
    assert uses_onednn(ours, x, w)
    assert_close(jax.jit(ours)(x, w), jax.jit(xla)(x, w))
    expected = jax.jit(jax.grad(loss_of(xla), (0, 1)))(x, w)
    actual = jax.jit(jax.grad(loss_of(ours), (0, 1)))(x, w)
    assert_close(actual[0], expected[0])
    assert_close(actual[1], expected[1])


@needs_onednn
@pytest.mark.parametrize("case", pick("dcgan64 D 32->16", "dcgan64 G tconv 16->32",
                                       "resnet50 56 3x3 s2", "cyclegan tconv k3 s2 up"), ids=repr)
def test_bfloat16_matches_float32_within_bfloat16_precision(case):
    x, w = inputs(case, jnp.bfloat16)
    xla, ours = both(case)
    assert uses_onednn(ours, x, w)
    f32 = (x.astype(jnp.float32), w.astype(jnp.float32))
    y = jax.jit(ours)(x, w)
    assert y.dtype == jnp.bfloat16
    assert_close(y, jax.jit(xla)(*f32), rtol=2e-2)
    grads = jax.jit(jax.grad(loss_of(ours), (0, 1)))(x, w)
    expected = jax.jit(jax.grad(loss_of(xla), (0, 1)))(*f32)
    assert grads[1].dtype == jnp.bfloat16
    assert_close(grads[0], expected[0], rtol=3e-2)
    assert_close(grads[1], expected[1], rtol=3e-2)


@needs_onednn
@pytest.mark.parametrize("case", pick("dcgan64 D 32->16", "dcgan64 G tconv 16->32",
                                       "cyclegan patch k4 s2"), ids=repr)
def test_second_derivatives_as_gradient_penalties_take_them(case):
    """The gradient of a gradient's norm (WGAN-GP, R1) with respect to both inputs."""
    x, w = inputs(case)

    def penalty(fn):
        return lambda x, w: jnp.sum(jax.grad(loss_of(fn), 0)(x, w) ** 2)

    xla, ours = both(case)
    expected = jax.jit(jax.grad(penalty(xla), (0, 1)))(x, w)
    actual = jax.jit(jax.grad(penalty(ours), (0, 1)))(x, w)
    assert_close(actual[0], expected[0], rtol=1e-4)
    assert_close(actual[1], expected[1], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Transformations


@needs_onednn
@pytest.mark.parametrize("case", pick("dcgan64 D 32->16", "dcgan64 G tconv 16->32"), ids=repr)
def test_vmap_over_inputs_and_over_kernels(case):
    """Shared kernel (the vmap folds into the batch) and one kernel per member (a population):
    values and kernel gradients."""
    x, w = inputs(case)
    xs, ws = jnp.stack([x, 2 * x, -x]), jnp.stack([w, -w, 0.5 * w])
    xla, ours = both(case)
    assert_close(jax.jit(jax.vmap(ours, (0, None)))(xs, w),
                 jax.jit(jax.vmap(xla, (0, None)))(xs, w))
    assert_close(jax.jit(jax.vmap(ours))(xs, ws), jax.jit(jax.vmap(xla))(xs, ws))
    per_member = [jax.jit(jax.vmap(jax.grad(loss_of(fn), 1)))(xs, ws) for fn in (ours, xla)]
    assert_close(*per_member)
    nested = [jax.jit(jax.vmap(jax.vmap(fn, (0, None)), (None, 0)))(xs, ws) for fn in (ours, xla)]
    assert_close(*nested)


def _mesh():
    return Mesh(np.array(jax.devices()), ("data",))


@needs_onednn
@pytest.mark.parametrize("case", pick("dcgan64 D 32->16", "dcgan64 G tconv 16->32"), ids=repr)
def test_shard_map_over_eight_devices(case):
    """A data-parallel gradient, as DataParallel computes it: batch split, kernel replicated,
    gradients averaged over the devices."""
    assert jax.device_count() == 8
    case = Case(case.name, (16, *case.x[1:]), case.kernel, **_window(case))
    x, w = inputs(case)

    def step(fn):
        def local(x, w):
            return jax.lax.pmean(jax.grad(loss_of(fn), 1)(x, w), "data")
        return jax.jit(jax.shard_map(local, mesh=_mesh(), in_specs=(P("data"), P()),
                                     out_specs=P(), check_vma=False))

    xla, ours = both(case)
    assert "OnednnConv" in step(ours).lower(x, w).as_text()
    assert_close(step(ours)(x, w), step(xla)(x, w))


@needs_onednn
def test_pmap_over_eight_devices():
    case = pick("dcgan64 D 32->16")[0]
    x, w = inputs(Case(case.name, (16, *case.x[1:]), case.kernel, **_window(case)))
    xs = x.reshape(8, 2, *x.shape[1:])
    ws = jnp.broadcast_to(w, (8, *w.shape))
    xla, ours = both(case)
    grads = [jax.pmap(jax.grad(loss_of(fn), (0, 1)), axis_name="data")(xs, ws)
             for fn in (ours, xla)]
    assert_close(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1])


def _window(case: Case) -> dict:
    kw = case.kwargs
    return {"strides": kw["window_strides"], "padding": kw["padding"],
            "lhs_dilation": kw["lhs_dilation"], "rhs_dilation": kw["rhs_dilation"]}


# ---------------------------------------------------------------------------------------------
# A flax model wired to it


class TinyGenerator(nn.Module):
    """Conv down, transposed conv up: nn.Conv given the drop-in, and `conv.conv_transpose`."""

    conv_fn: object = None

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                    conv_general_dilated=self.conv_fn)(x)
        x = nn.relu(x)
        conv3 = conv.Conv if self.conv_fn else nn.Conv  # the ready-made drop-in layer
        x = nn.relu(conv3(8, (3, 3), name="Conv_1")(x))
        kernel = self.param("up", nn.initializers.normal(0.1), (4, 4, 8, 3))
        transpose = conv.conv_transpose if self.conv_fn else lax.conv_transpose
        return jnp.tanh(transpose(x, jnp.swapaxes(kernel, 2, 3), (2, 2), ((2, 2), (2, 2)),
                                  dimension_numbers=DIMS, transpose_kernel=True))


@needs_onednn
def test_flax_model_wired_through_the_drop_in_trains_like_xla():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16, 16, 3)), jnp.float32)
    ours, xla = TinyGenerator(conv.conv_general_dilated), TinyGenerator(None)
    params = xla.init(jax.random.key(0), x)

    def step(model):
        @jax.jit
        def run(params):
            loss, grads = jax.value_and_grad(
                lambda p: jnp.mean((model.apply(p, x) - 0.5 * x) ** 2))(params)
            return loss, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        return run

    assert "OnednnConv" in step(ours).lower(params).as_text()
    p_ours = p_xla = params
    for _ in range(3):
        loss_ours, p_ours = step(ours)(p_ours)
        loss_xla, p_xla = step(xla)(p_xla)
        assert_close(loss_ours, loss_xla)
    jax.tree.map(assert_close, p_ours, p_xla)


# ---------------------------------------------------------------------------------------------
# Falling back to XLA, and the build's refusals (these run without the extension too)


def test_switched_off_or_unsupported_falls_back_to_xla(monkeypatch):
    case = pick("dcgan64 D 32->16")[0]
    x, w = inputs(case)
    xla, ours = both(case)
    monkeypatch.setenv(onednn.SWITCH_ENV, "0")
    assert not onednn.load() and "switched off" in onednn.status()
    assert not uses_onednn(ours, x, w)
    assert_close(jax.jit(ours)(x, w), jax.jit(xla)(x, w))
    monkeypatch.delenv(onednn.SWITCH_ENV)
    # what the custom calls do not take stays XLA's: groups, NCHW, float16
    grouped = functools.partial(conv.conv_general_dilated, window_strides=(1, 1),
                                padding="SAME", dimension_numbers=DIMS, feature_group_count=2)
    wg = w[:, :, :32]
    assert not uses_onednn(grouped, x, wg)
    assert_close(jax.jit(grouped)(x, wg),
                 lax.conv_general_dilated(x, wg, (1, 1), "SAME", dimension_numbers=DIMS,
                                          feature_group_count=2))
    nchw = functools.partial(conv.conv_general_dilated, window_strides=(1, 1), padding="SAME")
    xc, wc = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
    assert not uses_onednn(nchw, xc, wc)
    half = functools.partial(conv.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                             dimension_numbers=DIMS)
    assert not uses_onednn(half, x.astype(jnp.float16), w.astype(jnp.float16))


def test_build_without_a_compiler_or_onednn_says_so_and_builds_nothing(monkeypatch, tmp_path,
                                                                       capsys):
    output = tmp_path / "lib.so"
    monkeypatch.setattr(build, "find_compiler", lambda: None)
    assert build.build(output) is None
    assert "no C++ compiler" in capsys.readouterr().out
    monkeypatch.setattr(build, "find_compiler", lambda: "/usr/bin/true")
    monkeypatch.setenv(build.ROOT_ENV, str(tmp_path))
    monkeypatch.setattr(build.sys, "prefix", str(tmp_path))
    assert build.build(output) is None
    assert "oneDNN 3.x not found" in capsys.readouterr().out
    assert not output.exists()


def test_a_missing_library_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.delenv(onednn.LIBRARY_ENV, raising=False)
    library, why = onednn._open(tmp_path / "absent.so")
    assert library is None and "not built" in why and "absent.so" in why
    # a library named by the variable: the variable is what to fix, not `make onednn`
    monkeypatch.setenv(onednn.LIBRARY_ENV, str(tmp_path / "absent.so"))
    library, why = onednn._open(onednn.library_path())
    assert library is None and f"{onednn.LIBRARY_ENV}=" in why and "make onednn" not in why
    not_a_library = tmp_path / "notes.txt"
    not_a_library.write_text("not a shared object")
    library, why = onednn._open(not_a_library)
    assert library is None and why.startswith("not loadable (") and "notes.txt" in why


@pytest.mark.parametrize("value", ["maybe", "2", "disable"])
def test_a_switch_value_that_is_not_understood_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(onednn.SWITCH_ENV, value)
    with pytest.raises(UserError, match=f"{onednn.SWITCH_ENV}='{value}' is not understood"):
        onednn.load()
    for accepted in ("0", "off", "1", "On", ""):
        monkeypatch.setenv(onednn.SWITCH_ENV, accepted)
        assert onednn.switched_off() == (accepted in ("0", "off"))


@needs_onednn
@pytest.mark.parametrize("policy", [None, "ACTIVE"])
def test_loading_leaves_the_openmp_wait_policy_of_the_process_as_it_was(policy):
    # The library loads with OMP_WAIT_POLICY=PASSIVE unless the variable is set, and only while
    # it loads: a PyTorch imported later and child processes keep their own default.
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = ("import os; from common_jax import onednn; assert onednn.load(); "
            "print(repr(os.environ.get('OMP_WAIT_POLICY')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.strip().splitlines()[-1] == repr(policy)


@needs_onednn
def test_a_call_leaves_the_calling_threads_openmp_team_size_as_it_was():
    # A PyTorch in the same process shares this libgomp (same soname) and reads the Python
    # thread's team size: a custom call run on this thread must restore it.
    import ctypes

    libgomp = ctypes.CDLL("libgomp.so.1")  # the copy already loaded with the extension
    libgomp.omp_set_num_threads(3)
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.full((3, 3, 4, 8), 0.1)
    grad = jax.jit(jax.grad(lambda w: conv.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()))
    assert onednn.threads() != 3
    grad(w).block_until_ready()
    assert libgomp.omp_get_max_threads() == 3


@needs_onednn
def test_one_geometry_under_two_thread_counts_in_one_process(monkeypatch):
    # oneDNN splits a primitive's work for the threads it is told of when the primitive is
    # built, so primitives are kept per thread count: both counts must give the same values.
    case = pick("dcgan64 D 32->16")[0]
    x, w = inputs(case)
    _, ours = both(case)
    results = []
    for count in ("1", "2"):
        monkeypatch.setenv(onednn.THREADS_ENV, count)
        grad = jax.jit(jax.grad(loss_of(ours), (0, 1)))  # traced anew: the count is an attribute
        assert f"threads = {count}" in grad.lower(x, w).as_text()
        results.append(grad(x, w))
    for one, two in zip(*results, strict=True):
        assert_close(one, two)


def test_a_thread_count_that_is_not_a_number_is_a_user_error(monkeypatch):
    monkeypatch.setenv(onednn.THREADS_ENV, "two")
    with pytest.raises(UserError, match="whole number of threads"):
        onednn.threads()
    monkeypatch.setenv(onednn.THREADS_ENV, "3")
    assert onednn.threads() == 3
