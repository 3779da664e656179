"""Activations by name: values and gradients against float64 NumPy references, PReLU, the STE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax.activations import ACTIVATIONS, Activation, PReLU, activation_fn
from common_jax.errors import UserError

# Never exactly 0 (relu's kink), plus large |x| to check numerical stability.
X = np.concatenate([np.linspace(-3.0, 3.0, 24), [-100.0, -40.0, -17.0, 17.0, 40.0, 100.0]])
WEIGHTS = np.random.RandomState(0).uniform(0.5, 1.5, X.shape)  # grad of sum(w * f(x))


def sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def gauss_cdf(x):
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


# name -> (f, f'), in float64.
REFERENCES = {
    "binary_step": (lambda x: (x >= 0) * 1.0, lambda x: (np.abs(x) <= 1) * 1.0),  # STE
    "logistic": (sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x))),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "arctan": (np.arctan, lambda x: 1 / (1 + x**2)),
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
            lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))),
    "softplus": (lambda x: np.logaddexp(0, x), sigmoid),
    "leaky_relu": (lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, 1, 0.2)),
    "gelu": (lambda x: x * gauss_cdf(x),
             lambda x: gauss_cdf(x) + x * np.exp(-x**2 / 2) / math.sqrt(2 * math.pi)),
    "silu": (lambda x: x * sigmoid(x), lambda x: sigmoid(x) * (1 + x * (1 - sigmoid(x)))),
    "identity": (lambda x: x, lambda x: np.ones_like(x)),
}


def value_and_grad(f, x, w):
    return jax.value_and_grad(lambda x: jnp.sum(jnp.asarray(w, jnp.float32) * f(x)))(
        jnp.asarray(x, jnp.float32))


def check(f, ref, ref_grad, x=X, w=WEIGHTS):
    total, grad = value_and_grad(f, x, w)
    np.testing.assert_allclose(f(jnp.asarray(x, jnp.float32)), ref(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, w * ref_grad(x), rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(total))


def test_names():
    assert len(ACTIVATIONS) == 13 and set(REFERENCES) | {"prelu", "softmax"} == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_values_and_gradients_match_numpy(name):
    check(activation_fn(name), *REFERENCES[name])


def test_options():
    check(activation_fn("leaky_relu", slope=0.1), lambda x: np.where(x > 0, x, 0.1 * x),
          lambda x: np.where(x > 0, 1, 0.1))
    check(activation_fn("elu", alpha=0.5),
          lambda x: np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0))),
          lambda x: np.where(x > 0, 1.0, 0.5 * np.exp(np.minimum(x, 0))))


@pytest.mark.parametrize("alias,name", [("sigmoid", "logistic"), ("swish", "silu")])
def test_aliases(alias, name):
    x = jnp.asarray(X, jnp.float32)
    np.testing.assert_array_equal(activation_fn(alias)(x), activation_fn(name)(x))


def test_binary_step_at_the_edges():
    x = np.array([-1.5, -1.0, -1e-3, 0.0, 1e-3, 1.0, 1.5])
    _, grad = value_and_grad(activation_fn("binary_step"), x, np.ones_like(x))
    np.testing.assert_array_equal(activation_fn("binary_step")(jnp.asarray(x)),
                                  [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])


def test_softmax_over_the_last_axis_is_stable():
    rng = np.random.RandomState(1)
    x = np.concatenate([rng.randn(2, 5), [[1000.0, 999.0, -1000.0, 0.0, 998.0],
                                          [-800.0, -801.0, -799.0, -1000.0, -900.0]]])
    w = rng.uniform(0.5, 1.5, x.shape)
    s = np.exp(x - x.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    # d/dx_j sum_i w_i s_i = s_j * (w_j - sum_i w_i s_i)
    grad = s * (w - (w * s).sum(-1, keepdims=True))
    check(activation_fn("softmax"), lambda _: s, lambda _: grad / w, x, w)


def test_errors_name_the_fix():
    with pytest.raises(UserError, match="unknown activation 'relux'; choose one of .*gelu"):
        activation_fn("relux")
    with pytest.raises(UserError, match="Activation"):
        activation_fn("prelu")
    with pytest.raises(UserError, match="'relu' does not take slope"):
        activation_fn("relu", slope=0.1)
    with pytest.raises(UserError, match="unknown activation"):
        Activation("nope").init(jax.random.PRNGKey(0), jnp.zeros(3))


@pytest.mark.parametrize("kind,options", [("tanh", {}), ("swish", {}),
                                          ("leaky_relu", {"slope": 0.1}), ("elu", {"alpha": 2.0})])
def test_activation_module_equals_the_function(kind, options):
    x = jnp.asarray(X, jnp.float32)
    module = Activation(kind, **options)
    variables = module.init(jax.random.PRNGKey(0), x)
    assert not jax.tree.leaves(variables)
    np.testing.assert_array_equal(module.apply(variables, x), activation_fn(kind, **options)(x))


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("module", [PReLU, Activation])
def test_prelu_learns_its_slope(module, per_channel):
    rng = np.random.RandomState(2)
    x = rng.randn(2, 3, 3, 4)
    layer = PReLU(per_channel=per_channel) if module is PReLU else Activation(
        "prelu", per_channel=per_channel)
    params = layer.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))["params"]
    assert params["slope"].shape == ((4,) if per_channel else ())
    np.testing.assert_array_equal(params["slope"], 0.25)
    slope = np.array([0.25, -0.5, 1.0, 2.0]) if per_channel else np.array(0.5)
    params = {"slope": jnp.asarray(slope, jnp.float32)}

    def total(params, x):
        return jnp.sum(layer.apply({"params": params}, x))

    out = layer.apply({"params": params}, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(out, np.where(x >= 0, x, slope * x), rtol=1e-6)
    g_slope, g_x = jax.grad(total, argnums=(0, 1))(params, jnp.asarray(x, jnp.float32))
    negative = np.minimum(x, 0)  # d/da sum(prelu) = sum of x where x < 0
    expected = negative.sum(axis=(0, 1, 2)) if per_channel else negative.sum()
    np.testing.assert_allclose(g_slope["slope"], expected, rtol=1e-5)
    np.testing.assert_allclose(g_x, np.where(x >= 0, 1.0, slope * np.ones_like(x)), rtol=1e-6)


def test_binary_step_layer_trains_with_the_straight_through_estimator():
    # A perceptron y = step(x . w + b) fitted by gradient descent to a linear threshold rule.
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.uniform(-1, 1, (64, 2)), jnp.float32)
    y = (x @ jnp.array([1.0, -2.0]) + 0.3 >= 0).astype(jnp.float32)
    step = activation_fn("binary_step")

    def loss(params):
        return jnp.mean((step(x @ params["w"] + params["b"]) - y) ** 2)

    params = {"w": jnp.array([-0.5, 0.5]), "b": jnp.array(-0.2)}
    update = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p)))
    start = float(loss(params))
    for _ in range(30):
        params = update(params)
    assert start > 0.3 and float(loss(params)) < 0.1 * start
