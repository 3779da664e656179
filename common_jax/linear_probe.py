"""A linear probe: softmax regression on frozen features, the standard measure of how much
class information a representation holds linearly.

`fit_linear_probe` standardises the features with the training split's mean and standard
deviation, then fits a dense layer (features -> classes) to the mean cross-entropy plus
``l2 * ||W||^2``, with one of two optimizers:

- "adam" (the default): minibatch Adam with a cosine-decayed learning rate for a fixed number
  of epochs, each one compiled `lax.scan` over a fresh permutation; well under a minute on
  50,000 x 2,048 features on two CPU cores, deterministic given `seed`. A short run like this
  stops before the minimum, which acts as extra regularisation.
- "lbfgs": full-batch L-BFGS (optax, zoom line search) until the gradient's norm is below
  `tol`: the exact minimiser, so the result depends on `l2` alone.

`tune_linear_probe` chooses `l2` the way published linear-evaluation protocols do: every value
of `L2_GRID` is fitted on 90% of the training split and scored on the held-out 10%
(`select_l2`), then the best one is refitted on the whole training split and scored once on
the test split, which plays no part in the choice.

    python -m common_jax.linear_probe --train train.npz --test test.npz [--out result.json]
    python -m common_jax.linear_probe --train train.npz --test test.npz --optimizer lbfgs \
        --l2 auto

reads `features` [N, D] and `labels` [N] from each .npz (as `train.py features` writes them)
and prints and optionally writes the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from common_jax.errors import UserError


def standardise(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits scaled by the training split's per-feature statistics (constant features
    stay 0 rather than dividing by zero)."""
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-8, std, 1.0)
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return scale(train_x), scale(test_x)


def _check(x: np.ndarray, y: np.ndarray, name: str, num_classes: int) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"{name}: features must be [N, D] and labels [N]; got {x.shape} and "
                        f"{y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise UserError(f"{name}: labels outside [0, {num_classes}); set num_classes to at "
                        f"least {int(y.max()) + 1}")


OPTIMIZERS = ("adam", "lbfgs")
# The L2 strengths `select_l2` tries, in half decades. Standardised 2,048-d ResNet50 features of
# CIFAR-10 do best near 1e-2 with the 45,000 training examples, near 1e-1 with 4,500.
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# L-BFGS tolerance (gradient norm) while choosing L2: the choice needs only the validation
# accuracies, which move by about 0.1 point between 1e-3 and 1e-4 on CIFAR-10 features, at
# about half the iterations.
SELECT_TOL = 1e-3


def _loss(params, x, y, l2):
    """Mean softmax cross-entropy plus l2 * ||W||^2 (the bias is not penalised)."""
    import jax.numpy as jnp
    import optax

    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + l2 * jnp.sum(params["w"] ** 2)


def _zeros(dim: int, num_classes: int):
    import jax.numpy as jnp

    return {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}


def _train_adam(x, y, *, num_classes: int, l2: float, epochs: int, batch_size: int, lr: float,
                seed: int):
    """Minibatch Adam with a cosine-decayed rate; each epoch one compiled scan over a fresh
    permutation (the remainder of each permutation is skipped)."""
    import jax
    import optax

    n, dim = x.shape
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    tx = optax.adam(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch))

    @jax.jit
    def epoch(carry, key, x, y):
        order = jax.random.permutation(key, n)[:steps_per_epoch * batch_size]

        def step(carry, rows):
            p, opt_state = carry
            grads = jax.grad(_loss)(p, x[rows], y[rows], l2)
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch_size))[0]

    params = _zeros(dim, num_classes)
    carry = (params, tx.init(params))
    x_dev, y_dev = jax.numpy.asarray(x), jax.numpy.asarray(y)
    for key in jax.random.split(jax.random.PRNGKey(seed), epochs):
        carry = epoch(carry, key, x_dev, y_dev)
    return carry[0], {"epochs": epochs}


def _dense_loss(params, x, onehot, l2):
    """`_loss` with one-hot labels: its gradient is dense (softmax minus labels), where integer
    labels make XLA build and constant-fold a scatter over every example."""
    import jax.numpy as jnp
    import optax

    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy(logits, onehot).mean()
    return ce + l2 * jnp.sum(params["w"] ** 2)


def _lbfgs_solve(params, x, onehot, l2, tol, max_iters):
    """L-BFGS iterations while the gradient's norm is at least `tol` (at most `max_iters`)."""
    import jax
    import jax.numpy as jnp
    import optax

    value_fn = lambda p: _dense_loss(p, x, onehot, l2)  # noqa: E731
    value_and_grad = optax.value_and_grad_from_state(value_fn)
    opt = optax.lbfgs()

    def step(carry):
        p, state, _, i = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=value_fn)
        return optax.apply_updates(p, updates), state, optax.tree.norm(grad), i + 1

    def going(carry):
        return (carry[3] < max_iters) & (carry[2] >= tol)

    p, _, _, iters = jax.lax.while_loop(going, step, (params, opt.init(params), jnp.inf, 0))
    # the norm at the returned parameters (the loop's is one step behind)
    return p, iters, optax.tree.norm(jax.grad(value_fn)(p))


_compiled_lbfgs = None


def _train_lbfgs(x, y, *, num_classes: int, l2: float, max_iters: int, tol: float,
                 init=None):
    """Full-batch L-BFGS (optax, zoom line search) until the gradient's norm falls below `tol`
    or `max_iters` iterations; returns the parameters and how it stopped. The problem is
    strictly convex, so the result is its unique minimum, whatever the start (`init`, e.g. the
    solution for a nearby l2, only saves iterations). One compilation serves every l2 and tol
    (they are traced) for features of one shape."""
    global _compiled_lbfgs
    import jax
    import jax.numpy as jnp

    if _compiled_lbfgs is None:
        _compiled_lbfgs = jax.jit(_lbfgs_solve, static_argnames="max_iters")
    params = init if init is not None else _zeros(x.shape[1], num_classes)
    onehot = jax.nn.one_hot(jnp.asarray(y), num_classes)
    params, iters, grad_norm = _compiled_lbfgs(params, jnp.asarray(x), onehot, l2, tol,
                                               max_iters=max_iters)
    return params, {"iterations": int(iters), "grad_norm": float(grad_norm)}


def _accuracy(params, x, y) -> float:
    import jax.numpy as jnp

    if not len(y):
        return float("nan")
    predicted = np.concatenate([np.asarray(jnp.argmax(x[i:i + 8192] @ params["w"] +
                                                      params["b"], -1))
                                for i in range(0, len(x), 8192)])
    return float((predicted == y).mean())


def _train(x, y, *, num_classes, l2, optimizer, epochs, batch_size, lr, seed, max_iters, tol,
           init=None):
    if optimizer == "adam":
        return _train_adam(x, y, num_classes=num_classes, l2=l2, epochs=epochs,
                           batch_size=batch_size, lr=lr, seed=seed)
    return _train_lbfgs(x, y, num_classes=num_classes, l2=l2, max_iters=max_iters, tol=tol,
                        init=init)


def _checked(train_x, train_y, test_x, test_y, num_classes: int, optimizer: str):
    """float32 features and int32 labels of both splits, or a UserError naming the fix."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown probe optimizer '{optimizer}'; use one of "
                        f"{', '.join(OPTIMIZERS)}")
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
    _check(train_x, train_y, "train", num_classes)
    _check(test_x, test_y, "test", num_classes)
    if train_x.shape[1] != test_x.shape[1]:
        raise UserError(f"train features have {train_x.shape[1]} dimensions but test features "
                        f"{test_x.shape[1]}; extract both with the same network")
    return train_x, train_y, test_x, test_y


def fit_linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int, l2: float = 1e-4,
                     epochs: int = 30, batch_size: int = 512, lr: float = 1e-3,
                     seed: int = 0, optimizer: str = "adam", max_iters: int = 1000,
                     tol: float = 1e-4) -> dict[str, Any]:
    """Trains softmax regression on standardised features; returns test and train accuracy,
    the settings and the wall time (seconds, compilation included).

    optimizer "adam": `epochs` of minibatch Adam (`batch_size`, `lr`, cosine decay, `seed`).
    "lbfgs": full batch to convergence (`max_iters`, `tol` on the gradient's norm); then the
    result is the exact minimiser of the regularised loss and depends on `l2` alone.
    """
    start = time.perf_counter()
    train_x, train_y, test_x, test_y = _checked(train_x, train_y, test_x, test_y, num_classes,
                                                optimizer)
    train_x, test_x = standardise(train_x, test_x)
    n, dim = train_x.shape
    params, info = _train(train_x, train_y, num_classes=num_classes, l2=l2,
                          optimizer=optimizer, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=seed, max_iters=max_iters, tol=tol)
    if optimizer == "adam":
        settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                    "schedule": "cosine"}
    else:
        settings = {"max_iters": max_iters, "tol": tol, **info}
    return {
        "test_accuracy": _accuracy(params, test_x, test_y),
        "train_accuracy": _accuracy(params, train_x, train_y),
        "num_train": int(n), "num_test": int(len(test_y)), "feature_dim": int(dim),
        "settings": {"num_classes": num_classes, "l2": l2, "optimizer": optimizer, **settings,
                     "standardised": "train mean/std"},
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) of a training split: a seeded random `fraction` held out."""
    if not 0 < fraction < 1 or round(n * fraction) < 1 or round(n * fraction) >= n:
        raise UserError(f"a validation fraction of {fraction} leaves no examples on one side "
                        f"of {n}; use a fraction in (0, 1), e.g. 0.1")
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    return np.sort(order[held:]), np.sort(order[:held])


def select_l2(train_x, train_y, *, num_classes: int, grid=L2_GRID, val_fraction: float = 0.1,
              seed: int = 0, optimizer: str = "lbfgs", tol: float = SELECT_TOL,
              max_iters: int = 1000, epochs: int = 30, batch_size: int = 512,
              lr: float = 1e-3) -> dict[str, Any]:
    """The L2 strength of `grid` with the best accuracy on a held-out `val_fraction` of the
    training split, fitting on the rest (standardised by the rest's statistics). The test
    split plays no part. Ties go to the stronger penalty. With L-BFGS the grid runs from the
    strongest penalty down, each fit starting from the previous solution; "at_edge" says the
    best value is the grid's first or last (a wider grid might do better)."""
    train_x, train_y, _, _ = _checked(train_x, train_y, train_x[:0], train_y[:0], num_classes,
                                      optimizer)
    if not grid:
        raise UserError("the L2 grid is empty; give at least one value")
    fit_rows, val_rows = validation_split(len(train_y), val_fraction, seed)
    x_fit, x_val = standardise(train_x[fit_rows], train_x[val_rows])
    scores, fits, params = {}, {}, None
    for l2 in sorted(grid, reverse=True):
        params, fits[l2] = _train(x_fit, train_y[fit_rows], num_classes=num_classes, l2=l2,
                                  optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                                  lr=lr, seed=seed, max_iters=max_iters, tol=tol,
                                  init=params if optimizer == "lbfgs" else None)
        scores[l2] = _accuracy(params, x_val, train_y[val_rows])
    best = max(scores, key=lambda l2: (scores[l2], l2))
    return {"l2": best, "at_edge": len(grid) > 1 and best in (min(grid), max(grid)),
            "validation_accuracy": {f"{k:g}": v for k, v in sorted(scores.items())},
            "fits": {f"{k:g}": v for k, v in sorted(fits.items())}, "tol": tol,
            "num_fit": int(len(fit_rows)), "num_validation": int(len(val_rows)),
            "val_fraction": val_fraction, "seed": seed}


def tune_linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int, grid=L2_GRID,
                      val_fraction: float = 0.1, seed: int = 0, optimizer: str = "lbfgs",
                      **fit_args) -> dict[str, Any]:
    """`select_l2` on the training split, then `fit_linear_probe` with the chosen L2 on the
    whole training split, scored once on the test split. The result holds the selection
    (every grid value's validation accuracy) under "l2_selection". `fit_args` (epochs, tol,
    ...) apply to the final fit; the selection keeps its looser `SELECT_TOL`."""
    start = time.perf_counter()
    passed = {k: v for k, v in fit_args.items() if k in ("max_iters", "epochs", "batch_size",
                                                          "lr")}
    selection = select_l2(train_x, train_y, num_classes=num_classes, grid=grid,
                          val_fraction=val_fraction, seed=seed, optimizer=optimizer, **passed)
    result = fit_linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                              l2=selection["l2"], seed=seed, optimizer=optimizer, **fit_args)
    result["l2_selection"] = selection
    result["wall_time_s"] = round(time.perf_counter() - start, 2)
    return result


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """features, labels and the protocol (if any) of a features .npz."""
    try:
        with np.load(path) as data:
            protocol = json.loads(str(data["protocol"])) if "protocol" in data else {}
            return data["features"], data["labels"], protocol
    except FileNotFoundError:
        raise UserError(f"features file '{path}' not found; write it with `python train.py "
                        "features --workdir RUN --split train --out FILE.npz`") from None
    except KeyError as e:
        raise UserError(f"'{path}' has no {e} array; it needs `features` [N, D] and `labels` "
                        "[N]") from None


def l2_arg(text: str) -> float | str:
    """argparse type of an L2 option: a number or 'auto'."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither a number nor 'auto'") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="features .npz of the training split")
    parser.add_argument("--test", required=True, help="features .npz of the test split")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--num_classes", type=int, default=0, help="default: max label + 1")
    parser.add_argument("--l2", type=l2_arg, default=1e-4, help="L2 strength, or 'auto': "
                        "the best of L2_GRID on a held-out part of the training split")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                        help="adam: minibatches for --epochs; lbfgs: full batch to convergence")
    parser.add_argument("--val_fraction", type=float, default=0.1,
                        help="with --l2 auto: the part of the training split held out")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        train_x, train_y, protocol = load_npz(args.train)
        test_x, test_y, _ = load_npz(args.test)
        num_classes = args.num_classes or int(max(train_y.max(), test_y.max())) + 1
        settings = {"num_classes": num_classes, "epochs": args.epochs, "seed": args.seed,
                    "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer}
        if args.l2 == "auto":
            result = tune_linear_probe(train_x, train_y, test_x, test_y,
                                       val_fraction=args.val_fraction, **settings)
        else:
            result = fit_linear_probe(train_x, train_y, test_x, test_y, l2=args.l2, **settings)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["features_protocol"] = protocol
    print(f"linear probe: test accuracy {result['test_accuracy']:.4f}, train "
          f"{result['train_accuracy']:.4f} ({result['num_train']} x {result['feature_dim']}, "
          f"{result['wall_time_s']} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
