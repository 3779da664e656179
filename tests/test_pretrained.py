"""Merging pretrained weights into fresh Flax variables: the report, skip and rename, .npz
files, and refusals that leave everything untouched."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax.errors import UserError
from common_jax.pretrained import MergeReport, describe, flatten, merge_pretrained


class Net(nn.Module):
    """A backbone (conv + batch norm) and a classification head."""

    num_classes: int = 3
    width: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


IMAGES = jnp.ones((2, 8, 8, 1))


def init(seed: int, **kwargs):
    variables = Net(**kwargs).init(jax.random.PRNGKey(seed), IMAGES)
    # batch statistics that differ from the initial ones, as after pretraining
    _, updates = Net(**kwargs).apply(variables, IMAGES * seed, train=True,
                                     mutable=["batch_stats"])
    return {**variables, **updates}


def host_copy(tree):
    return jax.tree.map(np.array, tree)


def assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_transfer_to_a_new_head():
    pretrained, fresh = init(1, num_classes=5), init(2, num_classes=3)
    fresh_before, pretrained_before = host_copy(fresh), host_copy(pretrained)
    merged, report = merge_pretrained(fresh, pretrained, skip=("params/head/.*",))
    assert report == MergeReport(
        loaded=("batch_stats/bn/mean", "batch_stats/bn/var", "params/bn/bias",
                "params/bn/scale", "params/conv/bias", "params/conv/kernel"),
        skipped=("params/head/bias", "params/head/kernel"))
    assert_same(merged["params"]["conv"], pretrained["params"]["conv"])
    assert_same(merged["batch_stats"], pretrained["batch_stats"])
    assert_same(merged["params"]["head"], fresh["params"]["head"])  # kept at init
    assert_same(fresh, fresh_before)  # inputs untouched
    assert_same(pretrained, pretrained_before)
    assert Net(num_classes=3).apply(merged, IMAGES).shape == (2, 3)


def test_a_shape_mismatch_names_the_path_and_merges_nothing():
    pretrained, fresh = init(1, num_classes=5), init(2, num_classes=3)
    fresh_before = host_copy(fresh)
    with pytest.raises(UserError, match=r"at 'params/head/bias': pretrained \(5,\) float32, "
                                        r"model \(3,\) float32 \(and 1 more\); skip"):
        merge_pretrained(fresh, pretrained)
    assert_same(fresh, fresh_before)


def test_a_dtype_mismatch_is_refused():
    fresh = init(2)["params"]
    source = jax.tree.map(lambda x: np.asarray(x, np.float64), fresh)
    with pytest.raises(UserError, match=r"'bn/bias': pretrained \(4,\) float64, model \(4,\) "
                                        "float32"):
        merge_pretrained(fresh, source)


def test_npz_file_with_renamed_prefix_and_extra_arrays(tmp_path):
    pretrained = init(1)["params"]
    arrays = {f"encoder/{k}": v for k, v in flatten(pretrained).items()}
    arrays["encoder/fc/kernel"] = np.zeros((4, 1000), np.float32)
    del arrays["encoder/bn/scale"]
    np.savez(tmp_path / "w.npz", **arrays)
    fresh = init(2)["params"]
    merged, report = merge_pretrained(fresh, tmp_path / "w.npz", rename={"^encoder/": ""})
    assert report.missing == ("bn/scale",)
    assert report.unexpected == ("fc/kernel",)
    assert report.loaded == ("bn/bias", "conv/bias", "conv/kernel", "head/bias", "head/kernel")
    assert_same(merged["conv"], pretrained["conv"])
    assert_same(merged["bn"]["scale"], fresh["bn"]["scale"])
    assert isinstance(merged["conv"]["kernel"], jax.Array)


def test_flat_and_nested_sources_agree_and_rename_may_be_a_function():
    pretrained, fresh = init(1)["params"], init(2)["params"]
    nested, _ = merge_pretrained(fresh, pretrained)
    flat, _ = merge_pretrained(fresh, {f"old.{k}": v for k, v in flatten(pretrained).items()},
                               rename=lambda path: path.removeprefix("old."))
    assert_same(nested, flat)
    assert_same(nested, pretrained)


def test_refusals_name_the_fix(tmp_path):
    fresh = init(2)["params"]
    with pytest.raises(UserError, match="does not exist"):
        merge_pretrained(fresh, tmp_path / "absent.npz")
    (tmp_path / "bad.npz").write_text("not an npz")
    with pytest.raises(UserError, match="cannot read"):
        merge_pretrained(fresh, tmp_path / "bad.npz")
    with pytest.raises(UserError, match="maps both 'a/conv/bias' and 'b/conv/bias'"):
        merge_pretrained(fresh, {"a/conv/bias": np.zeros(4), "b/conv/bias": np.zeros(4)},
                         rename=[("^[ab]/", "")])
    with pytest.raises(UserError, match="bad skip pattern"):
        merge_pretrained(fresh, {}, skip=("(",))


def test_describe():
    report = MergeReport(loaded=("a", "b"), missing=tuple(f"m{i}" for i in range(10)),
                         skipped=("head/kernel",))
    assert describe(report) == [
        "pretrained: 2 arrays loaded, 10 missing (kept at init), 0 unexpected (unused), "
        "1 skipped",
        "  missing (kept at init): m0, m1, m2, m3, m4, m5, m6, m7, ... (2 more)",
        "  skipped: head/kernel"]
