"""Schedules against NumPy references, optimizers against the classifier's former construction
(bit for bit), DCGAN's plain Adam, frozen parameters and per-group learning rates."""

import functools
import itertools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from classifiers_jax.configs import base
from classifiers_jax.trainers import classifier
from common_jax import optim
from common_jax.errors import UserError
from gans_jax.configs import dcgan_mnist

# ----------------------------------------------------------------------------- references


def np_linear(start, end, steps, t):
    """optax.linear_schedule: start -> end over `steps`, then end."""
    return start + (end - start) * np.clip(t / steps, 0.0, 1.0)


def np_schedule(o, num_steps, t):
    """The classifier's schedules as closed formulas (float64), t: int array of steps."""
    total = max(int(o.decay_steps or num_steps), 1)
    warmup = min(int(o.warmup_steps), total - 1)
    lr, end = o.lr, o.lr * o.final_lr_fraction
    if o.schedule == "constant":
        return np_linear(0.0, lr, warmup, t) if warmup else np.full(t.shape, lr)
    if o.schedule == "cosine":
        frac = np.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
        cosine = end + (lr - end) * 0.5 * (1 + np.cos(np.pi * frac))
        return np.where(t < warmup, np_linear(0.0, lr, max(warmup, 1), t), cosine)
    if o.schedule == "onecycle":
        rise = min(max(round(o.pct_start * total), 1), total - 1) if total > 1 else 1
        return np.where(t < rise, np_linear(lr * o.start_lr_fraction, lr, rise, t),
                        np_linear(lr, end, max(total - rise, 1), t - rise))
    raise AssertionError(o.schedule)


def np_linear_decay(lr, total, warmup, hold_fraction, t, end_fraction=0.0):
    """CycleGAN's rule: lr until hold (warm-up first), then linear to end at total."""
    hold = min(max(round(hold_fraction * total), warmup), total - 1)
    decay = lr + (lr * end_fraction - lr) * np.clip((t - hold) / (total - hold), 0, 1)
    held = np_linear(0.0, lr, warmup, t) if warmup else np.full(t.shape, lr)
    return np.where(t < hold, held, decay)


def former_schedule(config):
    """The classifier's make_schedule as it was before delegating to common_jax.optim."""
    o = config.optimizer
    total = max(int(o.decay_steps or config.num_steps), 1)
    warmup = min(int(o.warmup_steps), total - 1)
    if o.schedule == "constant":
        if not warmup:
            return optax.constant_schedule(o.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)], [warmup])
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=o.lr, warmup_steps=warmup, decay_steps=total,
            end_value=o.lr * o.final_lr_fraction)
    rise = min(max(int(round(o.pct_start * total)), 1), total - 1) if total > 1 else 1
    return optax.join_schedules([
        optax.linear_schedule(o.lr * o.start_lr_fraction, o.lr, rise),
        optax.linear_schedule(o.lr, o.lr * o.final_lr_fraction, max(total - rise, 1)),
    ], [rise])


def former_optimizer(config):
    """The classifier's make_optimizer as it was before delegating to common_jax.optim."""
    o = config.optimizer
    lr = former_schedule(config)
    mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    l2 = [optax.add_decayed_weights(o.weight_decay, mask)] if o.weight_decay else []
    if o.name == "sgd":
        return optax.chain(*l2, optax.sgd(lr, momentum=o.momentum or None,
                                          nesterov=bool(o.nesterov and o.momentum)))
    if o.name == "adam":
        return optax.chain(*l2, optax.adam(lr, b1=o.b1, b2=o.b2))
    return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)


def tiny_params(seed=0):
    rng = np.random.RandomState(seed)
    shapes = {"backbone": {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
                           "bn": {"scale": (4,), "bias": (4,)}},
              "head": {"kernel": (4, 3), "bias": (3,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def gradient(path, x, step):
    """A fixed random gradient for each (parameter path, step), whatever else the tree holds."""
    rng = np.random.RandomState(zlib.crc32(optim.path_str(path).encode()) + step)
    return jnp.asarray(rng.normal(size=x.shape), x.dtype)


def run(tx, params, steps=3):
    """Updates of `steps` optimizer steps on fixed random gradients, and the final state."""
    state, history = tx.init(params), []
    for step in range(steps):
        grads = jax.tree_util.tree_map_with_path(functools.partial(gradient, step=step),
                                                 params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(updates)
    return history, state


def assert_trees_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- schedules

CASES = [  # (schedule, num_steps, decay_steps, warmup_steps, pct_start, final_fraction)
    ("constant", 100, 0, 0, 0.25, 0.0), ("constant", 100, 0, 10, 0.25, 0.0),
    ("constant", 1, 0, 5, 0.25, 0.0), ("cosine", 100, 0, 0, 0.25, 0.0),
    ("cosine", 100, 0, 10, 0.25, 0.1), ("cosine", 50, 80, 7, 0.25, 0.0),
    ("cosine", 2, 0, 5, 0.25, 0.0), ("onecycle", 100, 0, 0, 0.25, 0.0),
    ("onecycle", 97, 0, 0, 0.3, 0.05), ("onecycle", 10, 40, 0, 0.5, 0.0),
    ("onecycle", 2, 0, 0, 0.25, 0.0), ("onecycle", 1, 0, 0, 0.25, 0.0),
]


def classifier_config(schedule, num_steps, decay_steps, warmup, pct_start, final):
    c = base.get_base_config()
    c.num_steps = num_steps
    o = c.optimizer
    o.lr, o.schedule, o.decay_steps, o.warmup_steps = 0.4, schedule, decay_steps, warmup
    o.pct_start, o.final_lr_fraction, o.start_lr_fraction = pct_start, final, 0.1
    return c


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_schedules_follow_the_former_formulas(case):
    c = classifier_config(*case)
    t = np.arange(0, max(c.num_steps, c.optimizer.decay_steps) + 5)
    new = optim.make_schedule(c.optimizer, c.num_steps)
    values = np.array([float(new(i)) for i in t])
    np.testing.assert_allclose(values, np_schedule(c.optimizer, c.num_steps, t),
                               rtol=1e-5, atol=1e-7)
    # and the classifier's schedule (delegating) is the former one bit for bit
    old, delegated = former_schedule(c), classifier.make_schedule(c)
    for i in t:
        assert float(delegated(i)) == float(old(i)), i


@pytest.mark.parametrize("warmup,hold,final", [(0, 0.5, 0.0), (10, 0.5, 0.0), (0, 0.25, 0.1),
                                               (30, 0.1, 0.0), (0, 1.0, 0.0)])
def test_linear_decay_is_cyclegans_schedule(warmup, hold, final):
    o = optim.optimizer_config(lr=2e-4, schedule="linear_decay", warmup_steps=warmup,
                               constant_fraction=hold, final_lr_fraction=final)
    schedule = optim.make_schedule(o, 200)
    t = np.arange(0, 206)
    np.testing.assert_allclose([float(schedule(i)) for i in t],
                               np_linear_decay(2e-4, 200, warmup, hold, t, final),
                               rtol=1e-5, atol=1e-12)
    if (warmup, hold) == (0, 0.5):  # constant for the first half, then linear to 0
        assert float(schedule(99)) == pytest.approx(2e-4)
        assert float(schedule(150)) == pytest.approx(1e-4)
        assert float(schedule(200)) == 0.0


def test_linear_decay_on_sections_without_its_key():
    c = base.get_base_config()  # the classifier's section has no constant_fraction
    c.optimizer.schedule, c.optimizer.lr = "linear_decay", 1.0
    schedule = classifier.make_schedule(c)
    assert float(schedule(c.num_steps // 2 - 1)) == 1.0
    assert float(schedule(c.num_steps * 3 // 4)) == pytest.approx(0.5)


def test_unknown_names_list_the_choices():
    o = optim.optimizer_config(schedule="step")
    with pytest.raises(UserError, match="--config.g_opt.schedule to one of constant, "
                                        "linear_decay, cosine, onecycle"):
        optim.make_schedule(o, 10, config_path="g_opt")
    o = optim.optimizer_config(name="lamb")
    with pytest.raises(UserError, match="--config.optimizer.name to one of sgd, adam, adamw"):
        optim.make_optimizer(o, 10)
    assert optim.SCHEDULES == ("constant", "linear_decay", "cosine", "onecycle")
    assert optim.OPTIMIZERS == ("sgd", "adam", "adamw")


def test_optimizer_config_defaults_and_overrides():
    o = optim.optimizer_config(name="sgd", lr=0.1)
    assert (o.name, o.lr, o.schedule, o.weight_decay, o.freeze) == ("sgd", 0.1, "constant",
                                                                    0.0, ())
    assert set(base.get_base_config().optimizer.keys()) <= set(o.keys())
    with pytest.raises(TypeError, match="learning_rate"):
        optim.optimizer_config(learning_rate=0.1)


# ----------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name,weight_decay,momentum,nesterov,schedule", [
    (n, wd, m, nv, s) for n, wd, (m, nv), s in itertools.product(
        ("sgd", "adam", "adamw"), (0.0, 5e-4), ((0.9, True), (0.9, False), (0.0, True)),
        ("constant", "cosine", "onecycle"))
    if n == "sgd" or (m, nv) == (0.9, True)])
def test_classifier_optimizers_are_bitwise_the_former_ones(name, weight_decay, momentum,
                                                          nesterov, schedule):
    c = classifier_config(schedule, 20, 0, 3 if schedule != "onecycle" else 0, 0.25, 0.0)
    o = c.optimizer
    o.name, o.weight_decay, o.momentum, o.nesterov = name, weight_decay, momentum, nesterov
    params = tiny_params()
    old_updates, old_state = run(former_optimizer(c), params)
    new_updates, new_state = run(classifier.make_optimizer(c), params)
    assert_trees_identical(old_updates, new_updates)
    assert_trees_identical(old_state, new_state)  # same layout: checkpoints keep restoring


def test_dcgans_plain_adam():
    c = dcgan_mnist.get_config()
    o = optim.optimizer_config(name="adam", lr=c.optimizer.g_lr, b1=c.optimizer.b1,
                               b2=c.optimizer.b2)
    params = tiny_params()
    for lr in (c.optimizer.g_lr, c.optimizer.d_lr):
        plain_updates, plain_state = run(optax.adam(lr, b1=c.optimizer.b1, b2=c.optimizer.b2),
                                         params)
        new_updates, new_state = run(optim.make_optimizer(o, c.num_steps, learning_rate=lr),
                                     params)
        assert_trees_identical(plain_updates, new_updates)
        # the same arrays; optim's adam sits in a one-element chain
        assert_trees_identical(plain_state, new_state[0])


# ----------------------------------------------------------------------------- masks


def test_param_paths():
    tree = {"a": {"kernel": jnp.zeros(2)}, "blocks": [{"w": jnp.zeros(1)}, jnp.zeros(1)]}
    assert optim.param_paths(tree) == ["a/kernel", "blocks/0/w", "blocks/1"]


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_frozen_parameters_get_no_updates_and_no_state(name):
    params = tiny_params()
    o = optim.optimizer_config(name=name, weight_decay=0.1, freeze=("backbone/.*",))
    updates, state = run(optim.make_optimizer(o, 10), params)
    for u in updates:
        for leaf in jax.tree.leaves(u["backbone"]):
            assert not np.any(np.asarray(leaf))
        assert np.all(np.asarray(u["head"]["kernel"]) != 0)
    free = optim.make_optimizer(optim.optimizer_config(name=name, weight_decay=0.1), 10)
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    head, backbone = size(params["head"]), size(params["backbone"])
    moments = {"sgd": 1, "adam": 2, "adamw": 2}[name]
    assert size(free.init(params)) - size(state) == moments * backbone
    # the trainable parameters are updated as they would be alone
    alone, _ = run(optim.make_optimizer(optim.optimizer_config(name=name, weight_decay=0.1),
                                        10), {"head": params["head"]})
    assert_trees_identical([u["head"] for u in updates], [u["head"] for u in alone])
    assert head > 0


def test_frozen_parameters_under_jit():
    params = tiny_params()
    tx = optim.make_optimizer(optim.optimizer_config(freeze=("backbone/.*", ".*/bias")), 10)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    new, _ = step(params, tx.init(params))
    assert_trees_identical(new["backbone"], params["backbone"])
    assert_trees_identical(new["head"]["bias"], params["head"]["bias"])
    assert not np.allclose(new["head"]["kernel"], params["head"]["kernel"])


@pytest.mark.parametrize("spec", [("backbone/.*=0.1",), (("backbone/.*", 0.1),),
                                  ("backbone/conv/.*=0.1", "backbone/.*=0.1", ".*=7")])
def test_lr_multipliers_scale_a_groups_learning_rate(spec):
    params = tiny_params()
    for name in optim.OPTIMIZERS:
        o = optim.optimizer_config(name=name, lr=0.01, weight_decay=0.1, schedule="cosine",
                                   lr_multipliers=spec)
        scaled, _ = run(optim.make_optimizer(o, 10), params)
        o.lr_multipliers = ()
        full, _ = run(optim.make_optimizer(o, 10), params, steps=1)
        o.lr = 0.001
        tenth, _ = run(optim.make_optimizer(o, 10), params, steps=1)
        # first step: a 0.1 multiplier is the backbone at a tenth of the learning rate
        for got, want in zip(jax.tree.leaves(scaled[0]["backbone"]),
                             jax.tree.leaves(tenth[0]["backbone"]), strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-6)
        head_factor = 7.0 if len(spec) == 3 else 1.0
        for got, want in zip(jax.tree.leaves(scaled[0]["head"]),
                             jax.tree.leaves(full[0]["head"]), strict=True):
            np.testing.assert_allclose(got, head_factor * np.asarray(want), rtol=2e-6)


def test_describe_groups():
    o = optim.optimizer_config(freeze=("backbone/bn/.*",), lr_multipliers=("backbone/.*=0.1",))
    assert optim.describe_groups(o, tiny_params()) == [
        "frozen (no updates, no optimizer state): 2 arrays, 8 values",
        "lr x0.1 (backbone/.*): 2 arrays, 76 values",
        "trainable: 2 arrays, 15 values"]


@pytest.mark.parametrize("key,value,message", [
    ("freeze", ("backbone",), "freeze pattern 'backbone' matches no parameter.*'/.*'"),
    ("freeze", ("(",), "--config.optimizer.freeze pattern '\\(' is not a regular expression"),
    ("lr_multipliers", ("head=0.1",), "lr_multipliers pattern 'head' matches no parameter"),
    ("lr_multipliers", ("head/.*",), "bad --config.optimizer.lr_multipliers entry"),
    ("lr_multipliers", ("head/.*=-1",), "factor >= 0"),
    ("lr_multipliers", (("head/.*", "fast"),), "pattern=factor"),
])
def test_bad_masks_name_the_key_to_fix(key, value, message):
    o = optim.optimizer_config(**{key: value})
    with pytest.raises(UserError, match=message):
        optim.make_optimizer(o, 10).init(tiny_params())


def test_no_masks_keep_the_plain_layout():
    o = optim.optimizer_config(name="adam")
    state = optim.make_optimizer(o, 10).init(tiny_params())
    assert isinstance(state, tuple) and isinstance(state[0][0], optax.ScaleByAdamState)
    assert math.isclose(float(optim.make_schedule(o, 10)(5)), 1e-3, rel_tol=1e-7)


def test_the_classifier_honours_freeze_and_multipliers_added_to_its_section():
    c = base.with_variant(base.get_base_config(), "smoke")
    plain = classifier.create_state(c).net
    paths = optim.param_paths(plain.params)
    c.optimizer.freeze = (f"{paths[0].split('/')[0]}/.*",)
    c.optimizer.lr_multipliers = (".*/kernel=0.5",)
    net = classifier.create_state(c).net
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert size(net.opt_state) < size(plain.opt_state)
    assert_trees_identical(net.params, plain.params)


def test_unfreeze_holds_a_group_until_its_step_then_ramps_it_in():
    params = {"backbone": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
    o = optim.optimizer_config(name="sgd", lr=0.1, momentum=0.0)
    o.unfreeze = ("backbone/.*=2",)
    o.unfreeze_warmup = 2
    tx = optim.make_optimizer(o, 10)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    moved = []
    for _ in range(5):
        updates, state = tx.update(grads, state, params)
        moved.append((float(updates["backbone"]["kernel"][0, 0]),
                      float(updates["head"]["kernel"][0, 0])))
    # the head trains from step 0; the backbone waits for step 2, then half, then full lr
    np.testing.assert_allclose(moved, [(0, -0.1), (0, -0.1), (-0.05, -0.1), (-0.1, -0.1),
                                       (-0.1, -0.1)], rtol=1e-6)


def test_unfreeze_pattern_that_selects_nothing_or_has_no_step_is_one_line():
    params = {"head": {"kernel": jnp.ones((2, 2))}}
    o = optim.optimizer_config()
    o.unfreeze = ("stage9/.*=5",)
    with pytest.raises(UserError, match="unfreeze pattern 'stage9/.*' matches no parameter"):
        optim.make_optimizer(o, 10).init(params)
    o.unfreeze = ("head/.*",)
    with pytest.raises(UserError, match="'pattern=step'"):
        optim.make_optimizer(o, 10)
