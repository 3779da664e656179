"""Learning-rate schedules, optimizers and parameter masks chosen by name, for every model family.

A family keeps an `optimizer_config()` section per network in its config and builds the optax
transformation with `make_optimizer(opt_cfg, num_steps)`; `make_schedule(opt_cfg, num_steps)`
gives the learning rate per step for logging. Defaults and keys are documented in
`optimizer_config`.

Parameter paths
    Masks select parameters by path: the keys from the root of the tree given to the optimizer
    (``variables["params"]``, so no leading "params/") down to the array, joined with "/", e.g.
    ``"backbone/conv1/kernel"``; list and tuple entries are their index (``"blocks/0/kernel"``).
    `param_paths(params)` lists them. Patterns are Python regular expressions matched against
    the whole path (`re.fullmatch`): ``"backbone/.*"`` selects everything under ``backbone``,
    ``".*/bias"`` every bias. A pattern that selects nothing is an error (a typo would
    otherwise train the wrong parameters silently).

Frozen parameters (``freeze``) get zero updates and no optimizer state: the optimizer runs
inside `optax.multi_transform` on the other parameters only, so a frozen ResNet50 backbone
holds no Adam moments. Their gradients are still computed unless the model stops them, and
their batch-norm statistics follow the model's ``train`` flag, not the optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from common_jax.errors import UserError

SCHEDULES = ("constant", "linear_decay", "cosine", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")
FROZEN, TRAINABLE = "frozen", "trainable"  # multi_transform labels

# Keys families' configs may predate: read with these defaults (see optimizer_config).
OPTIONAL_KEYS = {"constant_fraction": 0.5, "freeze": (), "lr_multipliers": (), "unfreeze": (),
                 "unfreeze_warmup": 0}


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
    """An optimizer section with documented defaults; keyword arguments replace them.

    Keys (``--config.<section>.<key>`` on the command line):
      name: one of `OPTIMIZERS`. sgd (momentum, nesterov; L2 weight decay), adam (L2 weight
        decay added to the gradient), adamw (decoupled weight decay).
      lr: the peak learning rate.
      momentum, nesterov: sgd; momentum 0 is plain SGD.
      b1, b2: adam/adamw moment decays.
      weight_decay: kernels only (arrays of 2 or more dimensions), never biases or norm scales.
      schedule: one of `SCHEDULES`, see `make_schedule`.
      warmup_steps: linear warm-up from 0 to ``lr`` (constant, linear_decay, cosine).
      pct_start, start_lr_fraction: onecycle's rise: its share of the steps and first lr / lr.
      final_lr_fraction: last lr / lr (linear_decay, cosine, onecycle).
      constant_fraction: linear_decay: share of the steps at ``lr`` before the decay.
      decay_steps: schedule length in steps; 0 -> the run's num_steps (fix it to extend a run).
      freeze: path patterns of parameters that never change (module docstring).
      lr_multipliers: ``(pattern, factor)`` pairs or ``"pattern=factor"`` strings scaling the
        updates (so the learning rate) of the parameters a pattern selects; the first matching
        pattern applies, e.g. ``("backbone/.*=0.1",)``.
      unfreeze, unfreeze_warmup (optional keys, absent from the defaults): ``"pattern=step"``
        strings: the parameters a pattern selects get no updates before that step, then a
        linear ramp over ``unfreeze_warmup`` steps to their full learning rate; e.g.
        ``("backbone/stage5_.*=500", "backbone/.*=1000")`` trains the head alone, then adds
        the last stage, then the rest (the first matching pattern applies). The optimizer's
        state keeps its layout all along, so a run resumes in any phase.

    Example: the DCGAN paper's Adam is ``optimizer_config(name="adam", lr=2e-4, b1=0.5)``.
    """
    c = ml_collections.ConfigDict()
    c.name = "adam"
    c.lr = 1e-3
    c.momentum = 0.9
    c.nesterov = False
    c.b1 = 0.9
    c.b2 = 0.999
    c.weight_decay = 0.0
    c.schedule = "constant"
    c.warmup_steps = 0
    c.pct_start = 0.25
    c.start_lr_fraction = 0.1
    c.final_lr_fraction = 0.0
    c.constant_fraction = OPTIONAL_KEYS["constant_fraction"]
    c.decay_steps = 0
    c.freeze = OPTIONAL_KEYS["freeze"]
    c.lr_multipliers = OPTIONAL_KEYS["lr_multipliers"]
    unknown = sorted(set(overrides) - set(c.keys()))
    if unknown:
        raise TypeError(f"optimizer_config() has no keys {unknown}; it has {sorted(c.keys())}")
    c.update(overrides)
    return c


def _get(opt_cfg, key: str) -> Any:
    return opt_cfg.get(key, OPTIONAL_KEYS[key])


# ----------------------------------------------------------------------------- schedules


def _constant(o, total: int, warmup: int) -> optax.Schedule:
    if not warmup:
        return optax.constant_schedule(o.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)], [warmup])


def _linear_decay(o, total: int, warmup: int) -> optax.Schedule:
    # CycleGAN's schedule: lr held for a share of the run, then linear down to the end.
    hold = min(max(int(round(_get(o, "constant_fraction") * total)), warmup), total - 1)
    parts = [optax.constant_schedule(o.lr),
             optax.linear_schedule(o.lr, o.lr * o.final_lr_fraction, max(total - hold, 1))]
    if not warmup:
        return optax.join_schedules(parts, [hold])
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), *parts],
                                [warmup, hold])


def _cosine(o, total: int, warmup: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=warmup, decay_steps=total,
        end_value=o.lr * o.final_lr_fraction)


def _onecycle(o, total: int, warmup: int) -> optax.Schedule:
    # Linear up to the peak, then linear down: the triangle fast CIFAR trainers use. The rise
    # is its warm-up, so warmup_steps does not apply.
    rise = min(max(int(round(o.pct_start * total)), 1), total - 1) if total > 1 else 1
    return optax.join_schedules([
        optax.linear_schedule(o.lr * o.start_lr_fraction, o.lr, rise),
        optax.linear_schedule(o.lr, o.lr * o.final_lr_fraction, max(total - rise, 1)),
    ], [rise])


_SCHEDULE_FNS = {"constant": _constant, "linear_decay": _linear_decay, "cosine": _cosine,
                 "onecycle": _onecycle}


def make_schedule(opt_cfg, num_steps: int, *, config_path: str = "optimizer") -> optax.Schedule:
    """The learning rate per step that ``opt_cfg.schedule`` names.

    Args:
      opt_cfg: an optimizer section (`optimizer_config`).
      num_steps: the run's length; ``opt_cfg.decay_steps`` replaces it when non-zero.
      config_path: where the section sits in the config, for error messages.

    Returns:
      A schedule ``step -> lr`` (scalar in, scalar out). Over ``total`` steps with ``w``
      warm-up steps (linear from 0 to ``lr``; at most ``total - 1``):
        constant      ``lr`` after the warm-up;
        linear_decay  ``lr`` until ``round(constant_fraction * total)`` (and at least ``w``),
                      then linear to ``final_lr_fraction * lr`` at ``total``;
        cosine        cosine from ``lr`` at ``w`` to ``final_lr_fraction * lr`` at ``total``;
        onecycle      linear from ``start_lr_fraction * lr`` to ``lr`` over
                      ``round(pct_start * total)`` steps, then linear to
                      ``final_lr_fraction * lr`` at ``total`` (the rise replaces the warm-up).
      Beyond ``total`` the last value holds.
    """
    fn = _SCHEDULE_FNS.get(opt_cfg.schedule)
    if fn is None:
        raise UserError(f"unknown schedule '{opt_cfg.schedule}'; set --config.{config_path}"
                        f".schedule to one of {', '.join(SCHEDULES)}")
    total = max(int(opt_cfg.decay_steps or num_steps), 1)
    warmup = min(int(opt_cfg.warmup_steps), total - 1)
    return fn(opt_cfg, total, warmup)


# ----------------------------------------------------------------------------- paths and masks


def path_str(key_path: Sequence[Any]) -> str:
    """A `jax.tree_util` key path as "a/b/kernel" (dict keys, attribute names, indices)."""
    parts = []
    for k in key_path:
        for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_paths(tree) -> list[str]:
    """The path of every array in a tree, in flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def decay_mask(params):
    """True for the arrays weight decay applies to: kernels (2+ dimensions), not biases or
    norm scales, whose decay only hurts."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise UserError(f"--config.{what} pattern '{p}' is not a regular expression "
                            f"({e}); fix it, e.g. 'backbone/.*'") from None
    return compiled


def _multiplier_rules(spec, what: str) -> list[tuple[str, float]]:
    """(pattern, factor) pairs from a mapping, pairs, or "pattern=factor" strings."""
    items = spec.items() if isinstance(spec, Mapping) else spec
    return [_rule(item, what) for item in items]


def _rule(item, what: str) -> tuple[str, float]:
    if isinstance(item, str):
        pattern, _, factor = item.rpartition("=")  # the factor never holds "="; a regex may
    elif isinstance(item, Sequence) and len(item) == 2:
        pattern, factor = item
    else:
        pattern, factor = "", None
    try:
        value = float(factor)
    except (TypeError, ValueError):
        value = float("nan")
    if not pattern or not value >= 0:
        kind, example = (("step", "backbone/.*=1000") if what.endswith("unfreeze")
                         else ("factor", "backbone/.*=0.1"))
        raise UserError(f"bad --config.{what} entry {item!r}; give 'pattern={kind}' strings or "
                        f"(pattern, {kind}) pairs with {kind} >= 0, e.g. ('{example}',)")
    return str(pattern), value


def _first_match(patterns: Sequence[re.Pattern], path: str) -> int | None:
    return next((i for i, p in enumerate(patterns) if p.fullmatch(path)), None)


def _check_all_match(patterns: Sequence[re.Pattern], paths: list[str], what: str) -> None:
    for p in patterns:
        if not any(p.fullmatch(path) for path in paths):
            example = paths[0] if paths else "(no parameters)"
            raise UserError(
                f"--config.{what} pattern '{p.pattern}' matches no parameter; patterns match "
                f"whole '/'-joined paths such as '{example}' (add '/.*' to select a subtree)")


def freeze(inner: optax.GradientTransformation, *,
           patterns: Sequence[str]) -> optax.GradientTransformation:
    """Zero updates and no optimizer state for the parameters `patterns` select.

    Args:
      inner: the optimizer of the other parameters; it sees a tree where frozen arrays are
        `optax.MaskedNode`s, so it allocates nothing for them.
      patterns: regular expressions matched against whole parameter paths.

    Returns:
      ``optax.multi_transform({"trainable": inner, "frozen": set_to_zero()}, labels)``.
    """
    compiled = _compile(patterns, "freeze")

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: FROZEN if _first_match(compiled, path_str(p)) is not None
            else TRAINABLE, params)

    return optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()}, labels)


def scale_by_path(*, rules: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    """Multiplies the updates of the arrays a pattern selects by its factor (the first match
    wins; others unchanged). Stateless. After an optimizer whose last step is the learning rate
    (all of `OPTIMIZERS`), a factor scales that group's learning rate, decay included.

    Args:
      rules: ``(pattern, factor)`` pairs; patterns match whole parameter paths.
    """
    patterns = _compile((p for p, _ in rules), "lr_multipliers")
    factors = [f for _, f in rules]

    def scale(key_path, update):
        i = _first_match(patterns, path_str(key_path))
        return update if i is None else update * factors[i]

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class UnfreezeState(NamedTuple):
    count: jax.Array  # int32: updates computed so far


def scale_by_unfreeze(*, rules: Sequence[tuple[str, float]],
                      warmup: int = 0) -> optax.GradientTransformation:
    """Zero updates for each group before its step, then a linear ramp to full over `warmup`
    steps. Placed last in the chain: the optimizer's own state (momentum, Adam moments) keeps
    following the gradients of a frozen group, so it is warm when the group starts to move,
    and decoupled weight decay, part of the update, waits too.

    Args:
      rules: ``(pattern, start_step)`` pairs; patterns match whole parameter paths, the first
        match wins; unmatched parameters train from the start.
      warmup: steps of the ramp after each start (0: full updates at once).
    """
    patterns = _compile((p for p, _ in rules), "unfreeze")
    starts = [int(s) for _, s in rules]

    def factor(count, start):
        if warmup <= 0:
            return (count >= start).astype(jnp.float32)
        return jnp.clip((count - start + 1) / warmup, 0.0, 1.0)

    def update_fn(updates, state, params=None):
        del params

        def scale(key_path, update):
            i = _first_match(patterns, path_str(key_path))
            return update if i is None else update * factor(state.count, starts[i]).astype(
                update.dtype)

        return (jax.tree_util.tree_map_with_path(scale, updates),
                UnfreezeState(count=optax.safe_int32_increment(state.count)))

    return optax.GradientTransformation(
        lambda params: UnfreezeState(count=jnp.zeros((), jnp.int32)), update_fn)


def _checked(tx: optax.GradientTransformation, groups: dict[str, list[re.Pattern]]):
    # Same transformation and state layout; init also refuses patterns that select nothing.
    def init_fn(params):
        paths = param_paths(params)
        for what, patterns in groups.items():
            _check_all_match(patterns, paths, what)
        return tx.init(params)

    return tx._replace(init=init_fn)


# ----------------------------------------------------------------------------- optimizers


def _named(o, lr, config_path: str) -> optax.GradientTransformation:
    # Classifier-compatible layouts: sgd and adam always inside a chain (with the L2 decay
    # first when set), adamw bare; checkpoints of earlier runs keep restoring.
    l2 = [optax.add_decayed_weights(o.weight_decay, decay_mask)] if o.weight_decay else []
    if o.name == "sgd":
        return optax.chain(*l2, optax.sgd(lr, momentum=o.momentum or None,
                                          nesterov=bool(o.nesterov and o.momentum)))
    if o.name == "adam":
        return optax.chain(*l2, optax.adam(lr, b1=o.b1, b2=o.b2))
    if o.name == "adamw":
        return optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
    raise UserError(f"unknown optimizer '{o.name}'; set --config.{config_path}.name to one of "
                    f"{', '.join(OPTIMIZERS)}")


def make_optimizer(opt_cfg, num_steps: int, *,
                   learning_rate: float | Callable[[Any], Any] | None = None,
                   config_path: str = "optimizer") -> optax.GradientTransformation:
    """The optimizer ``opt_cfg.name`` names, with its schedule, weight decay and masks.

    Args:
      opt_cfg: an optimizer section (`optimizer_config`; ``constant_fraction``, ``freeze`` and
        ``lr_multipliers`` may be absent).
      num_steps: the run's length, for the schedule.
      learning_rate: replaces ``make_schedule(opt_cfg, num_steps)``: a float gives a
        stateless constant rate, e.g. two learning rates from one section (a GAN's G and D).
      config_path: where the section sits in the config, for error messages.

    Returns:
      An `optax.GradientTransformation`. Layout of its state: sgd and adam are
      ``optax.chain([add_decayed_weights,] sgd|adam)``, adamw is `optax.adamw`; with
      ``lr_multipliers`` that is chained with `scale_by_path`, and with ``freeze`` all of it
      is the "trainable" branch of `freeze`. Without masks the layout is exactly the
      classifier's from before this module.
    """
    lr = make_schedule(opt_cfg, num_steps, config_path=config_path) if learning_rate is None \
        else learning_rate
    tx = _named(opt_cfg, lr, config_path)
    # Patterns are checked here first, so their errors name the config keys to fix.
    what = {key: f"{config_path}.{key}" for key in ("lr_multipliers", "freeze")}
    what["unfreeze"] = f"{config_path}.unfreeze"
    rules = _multiplier_rules(_get(opt_cfg, "lr_multipliers"), what["lr_multipliers"])
    starts = _multiplier_rules(_get(opt_cfg, "unfreeze"), what["unfreeze"])
    frozen = tuple(_get(opt_cfg, "freeze"))
    groups = {what["lr_multipliers"]: _compile((p for p, _ in rules), what["lr_multipliers"]),
              what["unfreeze"]: _compile((p for p, _ in starts), what["unfreeze"]),
              what["freeze"]: _compile(frozen, what["freeze"])}
    if rules:
        tx = optax.chain(tx, scale_by_path(rules=rules))
    if starts:
        tx = optax.chain(tx, scale_by_unfreeze(rules=starts,
                                               warmup=int(_get(opt_cfg, "unfreeze_warmup"))))
    if frozen:
        tx = freeze(tx, patterns=frozen)
    return _checked(tx, groups) if rules or frozen or starts else tx


def describe_groups(opt_cfg, params) -> list[str]:
    """Log lines: how many arrays and values are frozen, at a multiplied lr, and trainable."""
    frozen = _compile(_get(opt_cfg, "freeze"), "freeze")
    rules = _multiplier_rules(_get(opt_cfg, "lr_multipliers"), "lr_multipliers")
    patterns = _compile((p for p, _ in rules), "lr_multipliers")
    counts: dict[str, list[int]] = {}
    for key_path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = path_str(key_path)
        i = _first_match(patterns, path)
        group = ("frozen (no updates, no optimizer state)"
                 if _first_match(frozen, path) is not None
                 else "trainable" if i is None else f"lr x{rules[i][1]:g} ({rules[i][0]})")
        n = counts.setdefault(group, [0, 0])
        n[0], n[1] = n[0] + 1, n[1] + int(x.size)
    return [f"{group}: {a} arrays, {v:,} values" for group, (a, v) in counts.items()]
