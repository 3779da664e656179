"""An ablation of the GAN choices the seeds discuss, on real MNIST, measured the same way.

    python -m gans_jax.ablation --workdir runs/ablation --steps 2000

Trains the MNIST DCGAN for the same number of steps with (a) the paper's settings, (b) LSGAN,
(c) WGAN-GP with n_critic 5, (d) hinge loss + spectral norm, (e) nearest resize + conv
upsampling and (f) pixel shuffle, then scores each run's EMA generator on 5,000 samples:
- judge FD: the Frechet distance between generated and MNIST test images in the 128-d feature
  space of a small CNN trained here on MNIST (its test accuracy is reported). It is the FID
  formula on a digit classifier's features, not Inception FID, and not comparable with papers.
- mode coverage: the judge's class histogram of the samples: classes holding >= 1% of them
  and the KL divergence to the test set's class distribution.
- checkerboard: `gans_jax.checkerboard.checkerboard_score` against MNIST test images.
- images/s of training, from each run's summary.json.
Writes ablation.json, a Markdown table (ablation.md) and a copy of each final grid. Runs resume:
running the command again skips what is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from common_jax import data as data_lib
from common_jax import metrics
from common_jax.checkpoint import restore_for_inference
from common_jax.config_utils import apply_overrides
from common_jax.conv import Conv
from gans_jax import checkerboard
from gans_jax.configs import dcgan_mnist
from gans_jax.trainers import dcgan

VARIANTS = {
    "a_paper": ("DCGAN paper: non-saturating BCE, batch norm, transposed conv", {}),
    "b_lsgan": ("LSGAN loss", {"loss.kind": "lsgan"}),
    "c_wgan_gp": ("WGAN-GP, n_critic 5, layer-norm critic, Adam(1e-4, 0, 0.9)", {
        "loss.kind": "wasserstein", "loss.gradient_penalty": 10.0, "n_critic": 5,
        "model.d_norm": "layer", "optimizer.g_lr": 1e-4, "optimizer.d_lr": 1e-4,
        "optimizer.b1": 0.0, "optimizer.b2": 0.9}),
    "d_hinge_sn": ("hinge loss + spectral norm in D (no batch norm in D)", {
        "loss.kind": "hinge", "model.d_spectral_norm": True, "model.d_norm": "none"}),
    "e_resize_conv": ("nearest-neighbour resize + conv upsampling", {"model.upsample": "nearest"}),
    "f_pixel_shuffle": ("pixel shuffle (sub-pixel conv, ICNR init)",
                        {"model.upsample": "pixel_shuffle"}),
}


def variant_config(overrides: dict, steps: int) -> ml_collections.ConfigDict:
    c = dcgan_mnist.get_config()
    c.num_steps = steps
    c.progress_bar = False
    c.sample_every = max(steps // 4, 1)
    c.checkpoint_every = max(steps // 4, 1)
    return apply_overrides(c, overrides)


class Judge(nn.Module):
    """A small MNIST CNN: its 128-d penultimate layer is the feature space for the FD."""

    @nn.compact
    def __call__(self, x):  # x [B, 28, 28, 1] in [-1, 1]
        for features in (32, 64):
            x = nn.relu(Conv(features, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(10)(features)


def mnist_split(split: str):
    config = dcgan_mnist.get_config()
    source = data_lib.load_source(config.data, split=split)
    images = source.images.astype(np.float32) / 127.5 - 1.0
    return images, source.labels


def train_judge(path: Path, train_images, train_labels, test_images, test_labels):
    """Trains (or loads) the judge; returns (params, test accuracy)."""
    model = Judge()
    params = model.init(jax.random.PRNGKey(0), train_images[:1])["params"]
    if path.exists():
        saved = json.loads(path.with_suffix(".json").read_text())
        return flax.serialization.from_bytes(params, path.read_bytes()), saved["accuracy"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.RandomState(0)
    for _ in range(2):  # epochs
        order = rng.permutation(len(train_images))
        for i in range(0, len(order) - 127, 128):
            idx = order[i:i + 128]
            params, opt_state = step(params, opt_state, train_images[idx], train_labels[idx])
    predicted = judge_features(params, test_images)[1]
    accuracy = float((predicted == test_labels).mean())
    path.write_bytes(flax.serialization.to_bytes(params))
    path.with_suffix(".json").write_text(json.dumps({"accuracy": accuracy}))
    return params, accuracy


def judge_features(params, images, batch: int = 1000):
    """(features [N, 128], predicted classes [N])."""
    apply = jax.jit(lambda x: Judge().apply({"params": params}, x))
    outputs = [apply(images[i:i + batch]) for i in range(0, len(images), batch)]
    features = np.concatenate([np.asarray(f) for f, _ in outputs])
    predicted = np.concatenate([np.asarray(jnp.argmax(logits, -1)) for _, logits in outputs])
    return features, predicted


def generate_samples(workdir: Path, num: int, batch: int = 500) -> np.ndarray:
    config, state, _ = restore_for_inference(workdir, lambda c: dcgan)
    z = dcgan.sample_z(config, num, seed=123)
    return np.concatenate([dcgan.generate(state, z[i:i + batch], config)
                           for i in range(0, num, batch)])


def evaluate(workdir: Path, judge_params, test_images, test_labels, real_stats, num: int):
    fakes = generate_samples(workdir, num)
    features, predicted = judge_features(judge_params, fakes)
    summary = json.loads((workdir / "summary.json").read_text())
    coverage = metrics.class_coverage(predicted, 10, reference=np.bincount(test_labels))
    return {
        "judge_fd": round(metrics.frechet_distance(*metrics.feature_statistics(features),
                                                   *real_stats), 2),
        "classes_covered": coverage["classes_covered"],
        "class_kl": round(coverage["kl_to_data"], 4),
        "class_histogram": coverage["histogram"],
        "checkerboard": round(checkerboard.checkerboard_score(fakes, test_images[:num]), 3),
        "images_per_s": summary["images_per_s"],
        "wall_time_s": summary["wall_time_s"],
    }


def markdown_table(results: dict, judge_accuracy: float, steps: int, num: int) -> str:
    lines = [
        "| run | judge FD ↓ | classes ≥1% | class KL ↓ | checkerboard | images/s | final grid |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name}: {VARIANTS[name][0]} | {r['judge_fd']} | {r['classes_covered']}/10 | "
            f"{r['class_kl']} | {r['checkerboard']} | {r['images_per_s']} | "
            f"![{name}](docs/ablation/{name}.png) |")
    lines.append("")
    lines.append(f"{steps} steps each at batch 64; {num} samples per run vs {num} MNIST test "
                 f"images; judge test accuracy {judge_accuracy:.2%}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/ablation")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--docs", default="docs/ablation", help="where grid copies go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)

    train_images, train_labels = mnist_split("train")
    test_images, test_labels = mnist_split("test")
    judge_params, judge_accuracy = train_judge(root / "judge.msgpack", train_images,
                                               train_labels, test_images, test_labels)
    print(f"judge test accuracy: {judge_accuracy:.4f}")
    real_stats = metrics.feature_statistics(
        judge_features(judge_params, test_images[:args.samples])[0])

    results_path = root / "ablation.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.only:
        workdir = root / name
        dcgan.train_and_evaluate(variant_config(VARIANTS[name][1], args.steps), workdir)
        results[name] = evaluate(workdir, judge_params, test_images, test_labels, real_stats,
                                 args.samples)
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        shutil.copy(workdir / "samples_final.png", Path(args.docs) / f"{name}.png")
        results_path.write_text(json.dumps(results, indent=2))
        print(name, results[name])
    ordered = {name: results[name] for name in VARIANTS if name in results}
    table = markdown_table(ordered, judge_accuracy, args.steps, args.samples)
    (root / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
