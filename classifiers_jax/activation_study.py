"""The seeds' activation functions compared on Fashion-MNIST at an equal training budget.

    python -m classifiers_jax.activation_study --workdir runs/activations --steps 469

Trains the seeds' BasicCNN ([conv 5x5 -> 2x2 max pool -> activation] x 2 -> dense; Adam 1e-3,
batch 128) once per activation, with the same seed, data order and number of steps, then
evaluates each on the whole Fashion-MNIST test split (10,000 images). Writes study.json and a
Markdown table (study.md) with test top-1, test loss, training images/s and wall time.
Runs resume: an activation whose run has finished is read back, not trained again.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from classifiers_jax.configs import fashion_mnist
from classifiers_jax.trainers import classifier
from common_jax.parallel import use_cpu_cores

# The seeds' list, in their order; "softmax" normalises over the channels of each position.
STUDIED = ("binary_step", "logistic", "tanh", "arctan", "relu", "prelu", "elu", "softplus",
           "leaky_relu", "softmax")


def study_config(activation: str, steps: int, seed: int, data_path: str = "",
                 batch_size: int = 128):
    c = fashion_mnist.get_config("basic")
    c.batch_size = batch_size
    if data_path:
        c.data.path = data_path
    c.model.activation = activation
    c.num_steps = steps
    c.eval_every = 0  # the whole test split once, at the end
    c.checkpoint_every = steps
    c.seed = seed
    c.progress_bar = False
    return c


def run_one(workdir: Path, activation: str, steps: int, seed: int, data_path: str = "",
            batch_size: int = 128) -> dict:
    """Trains (or reads back) one activation's run; returns its row of the table."""
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("final_step") != steps or "eval" not in summary:
        summary = classifier.train_and_evaluate(
            study_config(activation, steps, seed, data_path, batch_size), workdir)
    final = summary["final_metrics"]
    return {"test_top1": final["eval_top1"], "test_loss": final["eval_loss"],
            "train_accuracy": final.get("accuracy"), "images_per_s": summary["images_per_s"],
            "wall_time_s": summary["wall_time_s"], "steps": steps, "batch_size": batch_size}


def markdown_table(results: dict, steps: int, batch_size: int) -> str:
    lines = ["| activation | test top-1 | test loss | train images/s | wall time (s) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['test_top1']:.2f}% | {r['test_loss']:.3f} | "
                     f"{r['images_per_s']:.0f} | {r['wall_time_s']:.0f} |")
    lines.append(f"\nBasicCNN, {steps} steps of batch {batch_size} each (same seed and data "
                 "order); accuracy on the whole Fashion-MNIST test split.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/activations")
    parser.add_argument("--steps", type=int, default=469, help="469 = one epoch at batch 128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--only", nargs="*", default=list(STUDIED), choices=list(STUDIED))
    parser.add_argument("--data_path", default="", help="Fashion-MNIST idx folder (default: "
                        "the config's: the Debian package's files, else TFDS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    use_cpu_cores((args.batch_size, fashion_mnist.get_config("basic").eval_batch_size))
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "study.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.only:
        results[name] = run_one(root / name, name, args.steps, args.seed, args.data_path,
                                args.batch_size)
        results_path.write_text(json.dumps(results, indent=2))
        print(name, results[name], flush=True)
    ordered = {name: results[name] for name in STUDIED if name in results}
    table = markdown_table(ordered, args.steps, args.batch_size)
    (root / "study.md").write_text(table + "\n")
    print(table)
    return ordered


if __name__ == "__main__":
    main()
