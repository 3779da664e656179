"""The linear probe's L-BFGS solver and its L2 choice on a held-out part of the training split:
the solver reaches the regularised minimum (NumPy gradient), the choice follows the
validation accuracies and never looks at the test split, and the command line takes
`--l2 auto`. The minibatch Adam probe is covered in test_autoencoders.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common_jax import linear_probe
from common_jax.errors import UserError


def blobs(n: int, seed: int, dim: int = 24, informative: int = 6, classes: int = 4):
    """Gaussian classes that differ in a few dimensions; the rest is noise (overlapping, so
    the L2 strength matters)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 1, (classes, informative))
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 1, (n, dim))
    x[:, :informative] += centres[y]
    return (3 * x + 5).astype(np.float32), y  # off-centre, scaled: standardisation has work


def numpy_gradient(w, b, x, y, l2):
    """Gradient of mean softmax cross-entropy + l2 * ||W||^2, in float64 NumPy."""
    logits = x.astype(np.float64) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y) + 2 * l2 * w, p.mean(0)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_lbfgs_reaches_the_regularised_minimum(l2):
    x, y = blobs(600, seed=0)
    x, _ = linear_probe.standardise(x, x[:0])
    params, info = linear_probe._train_lbfgs(x, y, num_classes=4, l2=l2, max_iters=500,
                                             tol=1e-5)
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    grad_w, grad_b = numpy_gradient(w, b, x, y, l2)
    start_w, _ = numpy_gradient(np.zeros_like(w), np.zeros_like(b), x, y, l2)
    assert info["iterations"] < 500 and info["grad_norm"] < 1e-4
    assert np.abs(start_w).max() > 0.05  # the start is far from the minimum
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
    # strictly convex: a start elsewhere (as the grid's warm starts) ends at the same point
    other, _ = linear_probe._train_lbfgs(x, y, num_classes=4, l2=l2, max_iters=500, tol=1e-5,
                                         init={"w": params["w"] + 0.5, "b": params["b"] - 1})
    np.testing.assert_allclose(other["w"], params["w"], atol=1e-3)


def test_stronger_penalty_shrinks_the_weights_and_lowers_the_train_fit():
    x, y = blobs(600, seed=0)
    weak = linear_probe.fit_linear_probe(x, y, x, y, num_classes=4, optimizer="lbfgs",
                                         l2=1e-4)
    strong = linear_probe.fit_linear_probe(x, y, x, y, num_classes=4, optimizer="lbfgs",
                                           l2=10.0)
    assert weak["train_accuracy"] > strong["train_accuracy"]
    assert weak["settings"]["optimizer"] == "lbfgs" and weak["settings"]["iterations"] > 0


def test_l2_choice_follows_validation_and_ignores_the_test_split():
    train_x, train_y = blobs(800, seed=1)
    test_x, test_y = blobs(400, seed=2)
    result = linear_probe.tune_linear_probe(train_x, train_y, test_x, test_y, num_classes=4)
    selection = result["l2_selection"]
    scores = {float(k): v for k, v in selection["validation_accuracy"].items()}
    assert sorted(scores) == sorted(linear_probe.L2_GRID)
    best = max(scores.values())
    assert selection["l2"] == max(k for k, v in scores.items() if v == best)  # ties: stronger
    assert result["settings"]["l2"] == selection["l2"]
    assert selection["num_fit"] + selection["num_validation"] == 800
    assert selection["num_validation"] == 80
    # different test labels and features change the test score, never the choice
    shuffled = linear_probe.tune_linear_probe(train_x, train_y, test_x[::-1],
                                              np.roll(test_y, 1), num_classes=4)
    assert shuffled["l2_selection"] == selection
    assert shuffled["test_accuracy"] != result["test_accuracy"]


def test_validation_split_is_seeded_disjoint_and_complete():
    fit, val = linear_probe.validation_split(50, 0.1, seed=3)
    again_fit, again_val = linear_probe.validation_split(50, 0.1, seed=3)
    np.testing.assert_array_equal(fit, again_fit)
    np.testing.assert_array_equal(val, again_val)
    assert len(val) == 5 and not set(fit) & set(val)
    assert sorted([*fit, *val]) == list(range(50))
    with pytest.raises(UserError, match="validation fraction"):
        linear_probe.validation_split(50, 1.0, seed=0)


def test_at_edge_says_the_grid_may_be_too_narrow():
    x, y = blobs(400, seed=4)
    one_sided = linear_probe.select_l2(x, y, num_classes=4, grid=(10.0, 30.0, 100.0))
    assert one_sided["l2"] == 10.0 and one_sided["at_edge"]  # huge penalties: the weakest wins


def test_unknown_optimizer_is_a_user_error():
    x, y = blobs(50, seed=0)
    with pytest.raises(UserError, match="unknown probe optimizer 'sgd'"):
        linear_probe.fit_linear_probe(x, y, x, y, num_classes=4, optimizer="sgd")


def test_cli_chooses_l2_on_validation(tmp_path, capsys):
    for name, seed, n in (("train", 5, 300), ("test", 6, 100)):
        x, y = blobs(n, seed)
        np.savez(tmp_path / f"{name}.npz", features=x, labels=y)
    out = tmp_path / "probe.json"
    code = linear_probe.main(["--train", str(tmp_path / "train.npz"), "--test",
                              str(tmp_path / "test.npz"), "--optimizer", "lbfgs", "--l2", "auto",
                              "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["settings"]["l2"] == result["l2_selection"]["l2"]
    assert result["l2_selection"]["num_validation"] == 30
    with pytest.raises(SystemExit):
        linear_probe.main(["--train", "a", "--test", "b", "--l2", "strong"])
    assert "neither a number nor 'auto'" in capsys.readouterr().err
