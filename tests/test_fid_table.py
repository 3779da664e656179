"""`python -m gans_jax.fid_table`: several runs scored against every reference image under one
protocol, the floor from two halves of the reference, and its refusals. A small stand-in for
the Inception network keeps it fast; the protocol fields still name it."""

from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax.metrics import gan_metrics as gm
from gans_jax import fid_table
from gans_jax.trainers import progan
from tests.test_progan import smoke_config, write_faces


class TinyFeatures(nn.Module):
    """pool3: 8 features per image (a conv, then the spatial mean)."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(8, (3, 3), strides=2)(x)
        return {"pool3": jnp.tanh(h).mean(axis=(1, 2))}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two ProGAN smoke runs (4 -> 16) on 40 random faces: one to the end, one cut at step 4."""
    faces = write_faces(tmp_path_factory.mktemp("faces"), 40, 16)
    full, cut = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("cut")
    progan.train_and_evaluate(smoke_config(faces), full)
    progan.train_and_evaluate(smoke_config(faces, num_steps=4, checkpoint_every=4), cut)
    return faces, full, cut


@pytest.fixture
def tiny_network(monkeypatch, tmp_path):
    module = TinyFeatures()
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    network = gm.FeatureNetwork(module, variables, "tiny", "0123abcd", resize="nearest",
                                image_size=16)
    monkeypatch.setattr(gm, "load_feature_network", lambda *a, **k: network)
    monkeypatch.setenv("COMMON_JAX_CACHE", str(tmp_path / "cache"))
    return network


def test_scores_each_run_against_every_reference_image_beside_the_floor(two_runs, tiny_network,
                                                                      tmp_path, capsys):
    _, full, cut = two_runs
    out = tmp_path / "table.json"
    fid_table.main(["--workdir", str(full), "--workdir", str(cut), "--num", "24", "--batch", "8",
                    "--kid_subset_size", "10", "--kid_subsets", "5", "--out", str(out)])
    table = json.loads(out.read_text())
    assert table["reference"]["n_real"] == 40 and table["reference"]["network"] == "tiny"
    assert table["floor"]["n_each"] == 20 and table["floor"]["fid"] >= 0
    full_row, cut_row = table["runs"]
    assert (full_row["step"], full_row["images_shown"]) == (10, 80)  # 2 + 4 + 4 steps of 8
    assert (cut_row["step"], cut_row["images_shown"]) == (4, 32)
    for row in (full_row, cut_row):
        assert row["protocol"]["n_real"] == 40 and row["protocol"]["n_fake"] == 24
        assert np.isfinite(row["fid"]) and row["fid"] > table["floor"]["fid"]
    assert full_row["fid"] != cut_row["fid"]
    printed = capsys.readouterr().out
    assert "floor (halves of 40 real images)" in printed and "80 images shown" in printed
    # The reference features were cached: a second table reads them back.
    again = fid_table.run(fid_table.parse_args(["--workdir", str(full), "--num", "24",
                                                "--batch", "8", "--kid_subset_size", "10",
                                                "--kid_subsets", "5"]))
    assert again["reference"]["cached"] and again["runs"][0]["fid"] == pytest.approx(
        full_row["fid"])


def test_floor_splits_the_features_into_two_random_halves():
    rng = np.random.default_rng(1)
    args = argparse.Namespace(kid_subsets=10, kid_subset_size=500)
    same = rng.normal(size=(2001, 4))
    low = fid_table.floor(same, args)
    assert low["n_each"] == 1000 and low["fid"] < 0.05 and abs(low["kid_mean"]) < 0.01
    # rows stored sorted by their first feature: halves taken in order would differ a lot
    ordered = same[np.argsort(same[:, 0])]
    assert fid_table.floor(ordered, args)["fid"] < 0.05
    in_order = [x[:, 0].mean() for x in (ordered[:1000], ordered[1000:2000])]
    assert in_order[1] - in_order[0] > 1.0


def test_progan_samples_do_not_depend_on_the_batch_they_are_drawn_in(two_runs):
    _, full, _ = two_runs
    config, state, trainer = fid_table.load_run(str(full))
    by_5 = np.concatenate(list(trainer.generate_batches(state, config, 12, batch_size=5)))
    by_12 = np.concatenate(list(trainer.generate_batches(state, config, 12, batch_size=12)))
    assert by_5.shape == (12, 16, 16, 3)
    np.testing.assert_allclose(by_5, by_12, atol=1e-5)


def test_refuses_a_missing_run_and_runs_of_different_image_sizes(two_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fid_table.main(["--workdir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    _, full, _ = two_runs
    config, _, _ = fid_table.load_run(str(full))
    other = config.copy_and_resolve_references()
    other.model.image_size = 8
    with pytest.raises(fid_table.UserError, match="compare runs of one image size"):
        fid_table.check_same_images([config, other], ["a", "b"])
