"""Config mistakes end in one line naming the fix, at start-up: an unknown key, a missing config
file, an unknown variant, an unknown choice for an enumerated option, a negative count. The
command line is run as a subprocess; `check_choices`, `check_counts` and `check_keys` also
directly, and every trainer's CONFIG_CHOICES against the shipped configs."""

import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from classifiers_jax.configs import cifar10, cifar10_fast, cifar100, fashion_mnist, mnist
from classifiers_jax.trainers import classifier
from common_jax.config_utils import check_choices, check_counts, check_keys
from common_jax.errors import UserError
from gans_jax.configs import dcgan_anime, dcgan_fashion_mnist, dcgan_mnist
from gans_jax.trainers import dcgan

ROOT = Path(__file__).resolve().parents[1]
GAN = "gans_jax/configs/dcgan_mnist.py:smoke"
CLASSIFIER = "classifiers_jax/configs/mnist.py:smoke"
# Reading this folder would fail with its own error, so the config's error must come first.
NO_DATA = ("--config.data.path=/nonexistent/folder", "--config.data.tfds_name=")


def run_train(config: str, *overrides: str, env: dict | None = None):
    cmd = [sys.executable, "train.py", f"--config={config}", "--workdir=/nonexistent/run",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(result, *parts: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), last
    for part in parts:
        assert part in last, last


# ----------------------------------------------------------------------------- flag parsing


@pytest.mark.parametrize("config,overrides,parts", [
    (GAN, ["--config.model.upsampl=nearest"],
     ["unknown config key 'model.upsampl'", "did you mean --config.model.upsample"]),
    (GAN, ["--config.nonkey=3"],
     ["unknown config key 'nonkey'", "the config has: ", "batch_size", "model"]),
    ("gans_jax/configs/dcgan_mnst.py", [],
     ["config file 'gans_jax/configs/dcgan_mnst.py' not found",
      "did you mean gans_jax/configs/dcgan_mnist.py"]),
    ("gans_jax/configs/dcgan_anime.py:nosuch", [],
     ["unknown config variant 'nosuch'", "DCGAN configs have: smoke"]),
], ids=["close-key", "unknown-key", "missing-file", "unknown-variant"])
def test_flag_mistakes_are_one_line(config, overrides, parts):
    assert_one_line_error(run_train(config, *overrides), *parts)


# ------------------------------------------------------------- choices and counts at start-up

# JAX_PLATFORMS names no platform: creating a JAX device would fail with JAX's own error, so the
# expected line also shows that none was created.
NO_DEVICES = {"JAX_PLATFORMS": "nosuch"}


@pytest.mark.parametrize("config,overrides,parts", [
    (GAN, ["--config.loss.kind=foo"],
     ["unknown loss.kind 'foo'; set --config.loss.kind to one of: minimax, non_saturating, "
      "lsgan, wasserstein, hinge"]),
    (CLASSIFIER, ["--config.model.activation=relu6"],
     ["unknown model.activation 'relu6'; set --config.model.activation to one of: ",
      "leaky_relu", "swish"]),
    (GAN, ["--config.log_every=-1", "--config.batch_size=0"],
     ["batch_size must be at least 1, got 0; set --config.batch_size to 1 or more",
      "log_every must not be negative, got -1; set --config.log_every to 0 or more (0: never)"]),
], ids=["gan-loss", "classifier-activation", "counts"])
def test_config_values_are_refused_before_data_and_devices(config, overrides, parts):
    assert_one_line_error(run_train(config, *NO_DATA, *overrides, env=NO_DEVICES), *parts)


# ----------------------------------------------------------------------------- check_choices

CHOICES = {"loss.kind": ("minimax", "hinge"), "parallel": ("shard_map", "pmap")}


def gan_like() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"loss": {"kind": "hinge"}, "parallel": "pmap",
                                      "batch_size": 8, "log_every": 0, "seed": -1})


def test_check_choices_accepts_valid_values_and_skips_missing_keys():
    check_choices(gan_like(), CHOICES)
    check_choices(ml_collections.ConfigDict({"loss": {}}), CHOICES)  # the code's defaults apply
    check_choices({"loss": {"kind": "minimax"}}, CHOICES)  # plain dicts too


def test_check_choices_names_the_key_and_every_valid_value():
    config = gan_like()
    config.loss.kind = "foo"
    with pytest.raises(UserError) as error:
        check_choices(config, CHOICES)
    assert str(error.value) == ("unknown loss.kind 'foo'; set --config.loss.kind to one of: "
                                "minimax, hinge")


CONFIGS = {
    dcgan: [m.get_config(v) for m in (dcgan_mnist, dcgan_fashion_mnist, dcgan_anime)
            for v in (None, "smoke")],
    classifier: [m.get_config(v) for m in (mnist, fashion_mnist, cifar10, cifar10_fast, cifar100)
                 for v in (None, "basic+smoke")],
}


@pytest.mark.parametrize("trainer", list(CONFIGS), ids=lambda t: t.__name__.rsplit(".", 1)[-1])
def test_every_shipped_config_passes_and_every_choice_names_a_key(trainer):
    for config in CONFIGS[trainer]:
        check_choices(config, trainer.CONFIG_CHOICES)
        check_counts(config)
        check_keys(config, list(trainer.CONFIG_CHOICES))  # a renamed key would skip its check
    for key, valid in trainer.CONFIG_CHOICES.items():
        config = CONFIGS[trainer][0].copy_and_resolve_references()
        *section, leaf = key.split(".")
        node = config
        for name in section:
            node = node[name]
        node[leaf] = "nosuch"
        with pytest.raises(UserError, match=f"set --config.{key} to one of: {valid[0]}"):
            check_choices(config, trainer.CONFIG_CHOICES)


# ------------------------------------------------------------------- check_counts, check_keys


def test_check_counts_allows_zero_and_negative_seeds_and_refuses_the_rest():
    check_counts(gan_like())  # log_every 0: never; seed -1: any integer seeds
    config = gan_like()
    config.batch_size, config.log_every, config.loss.steps = 0, -2, -1
    with pytest.raises(UserError) as error:
        check_counts(config)
    assert str(error.value) == (
        "batch_size must be at least 1, got 0; set --config.batch_size to 1 or more; "
        "log_every must not be negative, got -2; set --config.log_every to 0 or more (0: never); "
        "loss.steps must not be negative, got -1; set --config.loss.steps to 0 or more")


def test_check_keys_suggests_close_keys_or_lists_the_section():
    config = dcgan_mnist.get_config()
    with pytest.raises(UserError, match=r"did you mean --config\.model\.upsample\b"):
        check_keys(config, ["upsample"])  # the section forgotten
    with pytest.raises(UserError, match=r"did you mean --config\.metrics\.every\?"):
        check_keys(config, ["metrics.evry"])
    with pytest.raises(UserError, match=r"'model\.zzz'.*; section model has: channels, "):
        check_keys(config, ["model.zzz"])
    check_keys(config, ["model.upsample", "seed"])
